"""The launcher end to end: real Redis and SeaweedFS under supervisord, stand-ins for the API and worker."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import redis
from botocore.client import BaseClient

from deploy.devstack.servers import S3_CLIENT_CONFIG, S3_REGION, free_port
from tests.devstack.standin_launcher import WORKER_ARG, WORKER_NAME
from tests.support import process_exists, python, start_process, stop_process, wait_until

pytestmark = pytest.mark.integration


@dataclass
class RunningLauncher:
    process: subprocess.Popen
    data_dir: Path
    output: Path
    port: int
    env: dict[str, str]

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def ctl(self, *args: str) -> str:
        argv = [str(Path(python()).parent / "supervisorctl"), "-c", str(self.data_dir / "supervisord.conf"), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout

    def program_pid(self, name: str) -> int:
        return int(self.ctl("pid", name).strip() or 0)

    def statuses(self) -> dict[str, str]:
        return {line.split()[0]: line.split()[1] for line in self.ctl("status").splitlines() if line.strip()}


def launcher_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KILN_", "AWS_"))}
    return env | {"KILN_DATA_DIR": str(data_dir), "KILN_PORT": str(port)}


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[RunningLauncher]:
    data_dir, port = tmp_path / "kiln", free_port()
    env = launcher_env(data_dir, port)
    output = tmp_path / "launcher.out"
    process = start_process([python(), "-m", "tests.devstack.standin_launcher"], env, output)
    running = RunningLauncher(process, data_dir, output, port, env)
    try:
        wait_until(lambda: "Kiln is up" in running.text() or process.poll() is not None, 60, what="the launcher banner")
        assert process.poll() is None, running.text()[-4000:]
        yield running
    finally:
        stop_process(process, timeout=60)


def test_launcher_runs_the_stack_wires_its_environment_and_generates_private_secrets(launcher: RunningLauncher) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{launcher.port}/health", timeout=5) as response:
        assert response.status == 200
    token_file = launcher.data_dir / "api-token"
    token = token_file.read_text().strip()
    assert f"API token default: {token}" in launcher.text()
    private = ("api-token", "s3-credentials.json", "redis-password", "redis-url", "s3/security.toml", "s3/tls/key.pem")
    for name in private:
        assert stat.S_IMODE((launcher.data_dir / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(launcher.data_dir.stat().st_mode) == 0o700

    wait_until(lambda: set(launcher.statuses().values()) == {"RUNNING"}, 60, what="every program RUNNING")
    assert set(launcher.statuses()) == {"redis", "s3", "api", WORKER_NAME}

    report_path = launcher.data_dir / f"{WORKER_NAME}.json"
    report = json.loads(
        wait_until(lambda: report_path.exists() and report_path.read_text(), 15, what="the worker's report")
    )
    env = report["env"]
    assert report["argv"] == [WORKER_ARG]
    assert env["KILN_API_TOKEN"] == f"default={token}"
    assert env["KILN_PUBLIC_URL"] == f"http://127.0.0.1:{launcher.port}"
    assert env["KILN_DATA_DIR"] == str(launcher.data_dir)
    assert (env["KILN_WEIGHTS_PROFILE"], env["KILN_WEBHOOK_ALLOW_PRIVATE"], env["HF_HUB_OFFLINE"]) == (
        "tiny",
        "true",
        "1",
    )
    # Redis wants the generated password, which every program gets (and `kiln tokens` finds).
    password = (launcher.data_dir / "redis-password").read_text().strip()
    assert f":{password}@" in env["KILN_REDIS_URL"]
    assert (launcher.data_dir / "redis-url").read_text().strip() == env["KILN_REDIS_URL"]
    assert redis.Redis.from_url(env["KILN_REDIS_URL"]).ping()
    without_password = env["KILN_REDIS_URL"].replace(f":{password}@", "")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(without_password).ping()
    assert_owner_only(launcher.data_dir / "redis")

    s3 = boto3.client(
        "s3",
        endpoint_url=env["KILN_S3_ENDPOINT_URL"],
        aws_access_key_id=env["KILN_S3_ACCESS_KEY"],
        aws_secret_access_key=env["KILN_S3_SECRET_KEY"],
        region_name=S3_REGION,
        config=S3_CLIENT_CONFIG,
    )
    wait_until(lambda: bucket_exists(s3, env["KILN_S3_BUCKET"]), 30, what="SeaweedFS to create the stack's bucket")


def assert_owner_only(directory: Path) -> None:
    """Nothing under ``directory`` (the AOF included) is readable or enterable by another user."""
    found = [directory, *directory.rglob("*")]
    assert any(path.name.endswith(".aof") for path in found), "no append-only file"
    for path in found:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"


def bucket_exists(s3: BaseClient, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False
    return True


def test_launcher_restarts_a_dead_worker_and_stops_everything_on_sigterm(launcher: RunningLauncher) -> None:
    wait_until(lambda: launcher.statuses().get(WORKER_NAME) == "RUNNING", 15, what="the worker RUNNING")
    first_pid = launcher.program_pid(WORKER_NAME)
    os.kill(first_pid, signal.SIGKILL)
    wait_until(
        lambda: (
            launcher.program_pid(WORKER_NAME) not in (0, first_pid) and launcher.statuses()[WORKER_NAME] == "RUNNING"
        ),
        15,
        what="supervisord to restart the worker",
    )

    children = [launcher.program_pid(name) for name in ("redis", "s3", "api", WORKER_NAME)]
    supervisord_pid = int((launcher.data_dir / "supervisord.pid").read_text())
    assert all(children) and process_exists(supervisord_pid)

    second = start_process(
        [python(), "-m", "tests.devstack.standin_launcher"], launcher.env, launcher.data_dir.parent / "second.out"
    )
    assert second.wait(timeout=30) != 0
    assert "another Kiln stack is running" in (launcher.data_dir.parent / "second.out").read_text()

    launcher.process.send_signal(signal.SIGTERM)
    assert launcher.process.wait(timeout=60) == 0
    for pid in (supervisord_pid, *children):
        assert not process_exists(pid), f"pid {pid} outlived the launcher"
