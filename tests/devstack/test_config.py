"""What the launcher decides before starting anything: secrets, environment, programs, supervisord config."""

from __future__ import annotations

import configparser
import shlex
import stat
from pathlib import Path

import pytest

from deploy.devstack.launcher import Launcher
from deploy.devstack.programs import Program, StackContext, default_programs
from deploy.devstack.servers import RedisServer, SeaweedS3Server
from deploy.devstack.settings import StackSettings
from deploy.devstack.supervisor import SupervisorConfig
from shared.scheduling import queues


def test_generated_secrets_are_private_and_kept_across_runs(tmp_path: Path) -> None:
    env = {"KILN_DATA_DIR": str(tmp_path)}
    first, second = StackSettings.from_env(env), StackSettings.from_env(env)
    assert first.api_token and first.api_token == second.api_token
    assert (first.s3_access_key, first.s3_secret_key) == (second.s3_access_key, second.s3_secret_key)
    assert first.redis_password and first.redis_password == second.redis_password
    for name in ("api-token", "s3-credentials.json", "redis-password"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_each_bootstrap_token_has_a_name(tmp_path: Path) -> None:
    generated = StackSettings.from_env({"KILN_DATA_DIR": str(tmp_path / "a")})
    assert [(t.name, t.token) for t in generated.tokens] == [("default", generated.api_token)]
    assert (
        generated.child_environment("redis://x", "http://y", {})["KILN_API_TOKEN"] == f"default={generated.api_token}"
    )
    given = StackSettings.from_env({"KILN_DATA_DIR": str(tmp_path / "b"), "KILN_API_TOKEN": "alice=tok-a,tok-b"})
    assert [t.token for t in given.tokens] == ["tok-a", "tok-b"]
    assert given.tokens[0].name == "alice" and given.tokens[1].name.startswith("token-")


def test_environment_values_win_over_generated_ones(tmp_path: Path) -> None:
    env = {
        "KILN_DATA_DIR": str(tmp_path),
        "KILN_API_TOKEN": "from-env",
        "KILN_S3_ACCESS_KEY": "key",
        "KILN_S3_SECRET_KEY": "secret",
        "KILN_WEIGHTS_PROFILE": "full",
        "KILN_PORT": "8123",
    }
    settings = StackSettings.from_env(env)
    assert (settings.api_token, settings.s3_access_key, settings.s3_secret_key) == ("from-env", "key", "secret")
    assert not (tmp_path / "api-token").exists() and not (tmp_path / "s3-credentials.json").exists()
    assert child_token(settings) == "from-env"

    child = settings.child_environment("redis://127.0.0.1:1/0", "http://127.0.0.1:2", env)
    assert child["KILN_WEIGHTS_PROFILE"] == "full"
    assert child["KILN_PUBLIC_URL"] == "http://127.0.0.1:8123"
    assert (child["KILN_REDIS_URL"], child["KILN_S3_ENDPOINT_URL"]) == ("redis://127.0.0.1:1/0", "http://127.0.0.1:2")
    assert (child["KILN_WEBHOOK_ALLOW_PRIVATE"], child["HF_HUB_OFFLINE"], child["PYTHONUNBUFFERED"]) == (
        "true",
        "1",
        "1",
    )


def child_token(settings: StackSettings) -> str:
    return settings.child_environment("redis://x", "http://y", {})["KILN_API_TOKEN"]


def test_an_external_s3_endpoint_needs_its_keys(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="KILN_S3_ACCESS_KEY"):
        StackSettings.from_env({"KILN_DATA_DIR": str(tmp_path), "KILN_S3_ENDPOINT_URL": "http://s3.example"})


def test_servers_start_before_the_api_and_the_workers(tmp_path: Path) -> None:
    context = StackContext(
        api_port=8123, redis=RedisServer(tmp_path / "redis"), s3=SeaweedS3Server(tmp_path / "s3", "key", "secret-key")
    )
    programs = {program.name: program for program in default_programs(context)}
    assert list(programs) == ["redis", "s3", "api", "worker-sd2", "worker-sdxl", "worker-webhooks"]
    assert programs["redis"].priority < programs["api"].priority == programs["worker-sd2"].priority
    assert programs["api"].command[-4:] == ["--host", "127.0.0.1", "--port", "8123"]
    worker = shlex.join(programs["worker-sd2"].command)
    assert f"-Q {queues.SD2_DEPTH} " in worker and "--pool solo --concurrency 1" in worker
    assert "-A worker.celery_app:app " in worker
    webhooks = shlex.join(programs["worker-webhooks"].command)
    assert f"-Q {queues.WEBHOOKS} " in webhooks and "--pool threads" in webhooks
    # The webhook worker's own entry point, which imports no torch.
    assert "-A webhook_worker.celery_app:app " in webhooks


def test_supervisord_config_reads_back_commands_unchanged(tmp_path: Path) -> None:
    config = SupervisorConfig(tmp_path, tmp_path / "logs", tmp_path)
    command = ["celery", "--hostname", "gpu@%h", "--args", "a b;c"]
    config.write([Program("worker", command)])
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"))
    parser.read(config.path)
    assert shlex.split(parser["program:worker"]["command"].replace("%%", "%")) == command
    assert parser["program:worker"]["autorestart"] == "true"
    assert parser["unix_http_server"]["file"] == str(tmp_path / "supervisor.sock")
    # What the programs write (Redis's AOF, logs) is their owner's only.
    assert parser["program:worker"]["umask"] == "077"

    with pytest.raises(ValueError):
        config.write([Program("worker", ["sh", "-c", "true ; false"])])


def test_redis_behind_sentinels_is_used_instead_of_a_redis_of_the_stacks_own(tmp_path: Path) -> None:
    """``KILN_REDIS_SENTINELS`` set: ``make run`` starts no Redis (nor makes it a password), and every
    program is told the sentinels, the master's name and the URL with the password."""
    env = {
        "KILN_DATA_DIR": str(tmp_path),
        "KILN_REDIS_SENTINELS": "127.0.0.1:26379,127.0.0.1:26380",
        "KILN_REDIS_SENTINEL_MASTER": "kiln-ha",
        "KILN_REDIS_URL": "redis://:pw@unused:6379/2",
        "KILN_S3_ENDPOINT_URL": "http://127.0.0.1:2",
        "KILN_S3_ACCESS_KEY": "key",
        "KILN_S3_SECRET_KEY": "secret",
    }
    settings = StackSettings.from_env(env)
    assert settings.external_redis and settings.redis_password is None
    assert not (tmp_path / "redis-password").exists()
    context, child = Launcher(settings)._prepare_servers()
    assert context.redis is None and context.servers == []
    assert {name: child[name] for name in env if name.startswith("KILN_REDIS")} == {
        "KILN_REDIS_SENTINELS": "127.0.0.1:26379,127.0.0.1:26380",
        "KILN_REDIS_SENTINEL_MASTER": "kiln-ha",
        "KILN_REDIS_URL": "redis://:pw@unused:6379/2",
    }
    # Without a URL, the programs' default stands (no password, database 0); the sentinels are passed on.
    bare = StackSettings.from_env({"KILN_DATA_DIR": str(tmp_path / "b"), "KILN_REDIS_SENTINELS": "127.0.0.1:26379"})
    assert bare.child_environment(None, "http://y", {})["KILN_REDIS_SENTINELS"] == "127.0.0.1:26379"
    assert "KILN_REDIS_URL" not in bare.child_environment(None, "http://y", {})
