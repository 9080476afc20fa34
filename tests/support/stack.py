"""The real stack the integration tests share: redis-server and SeaweedFS on free ports, the API under
uvicorn (plain and TLS), a Celery GPU worker per model family on the tiny profile and a webhook worker,
all as subprocesses, and what the tests need to reach it (tokens, clients, settings)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import trustme
from celery.utils.nodenames import host_format

from deploy.devstack.servers import RedisServer, SeaweedS3Server, free_port, free_ports
from shared.runtime.celery_config import create_celery
from shared.settings import Settings
from tests.support import python, start_process, stop_process, stop_processes, wait_until
from tests.support.step_gates import open_every_gate

TOKEN_A = "token-a-" + secrets.token_hex(8)
TOKEN_B = "token-b-" + secrets.token_hex(8)
PAGE_SIZE = 2
# Short enough for tests to watch several retries; the default spans hours.
WEBHOOK_RETRY_SCHEDULE_S = [0.5, 0.5, 1, 2, 4, 8]
# Short leases so the reaper notices a killed worker within seconds.
LEASE_S = 3
SHUTDOWN_GRACE_S = 1
# A Celery worker logs this once it takes jobs.
READY = b" ready."

# Kiln sends no revokes, so the start-up sync with the other workers (mingle) only costs each
# (re)start a second.
CELERY = [python(), "-m", "celery", "-A", "worker.celery_app:app", "worker", "--loglevel", "INFO", "--without-mingle"]
# The webhook worker's own entry point (no torch), as deploy/devstack, compose and Kubernetes run it.
WEBHOOK_CELERY = [
    *[python(), "-m", "celery", "-A", "webhook_worker.celery_app:app", "worker", "--loglevel", "INFO"],
    "--without-mingle",
]
GPU_WORKER_ARGV = [*CELERY, "--pool", "solo", "--concurrency", "1", "-Q", "gpu.sd2-depth", "--hostname", "test-gpu@%h"]
SDXL_WORKER_ARGV = [*CELERY, "--pool", "solo", "--concurrency", "1", "-Q", "gpu.sdxl", "--hostname", "test-sdxl@%h"]
# The webhook worker's threads, and the attempts one tenant may hold of them (one is always left to others).
WEBHOOK_THREADS = 4
WEBHOOK_SENDING_PER_TENANT = WEBHOOK_THREADS - 1
WEBHOOK_WORKER_ARGV = [
    *WEBHOOK_CELERY,
    "--pool",
    "threads",
    "--concurrency",
    str(WEBHOOK_THREADS),
    "-Q",
    "webhooks",
    "--hostname",
    "test-webhooks@%h",
]


@dataclass
class Stack:
    base_url: str
    tls_base_url: str
    tls_ca: Path
    env: dict[str, str]
    redis: RedisServer
    s3: SeaweedS3Server
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    # How each process was started (to start it again), and its log's " ready." count before.
    argv: dict[str, list[str]] = field(default_factory=dict)
    ready_lines_before: dict[str, int] = field(default_factory=dict)
    # Each worker's Prometheus port (KILN_WORKER_METRICS_PORT), by process name.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    # Each process log's size when the current test started (what a failure report shows is after it).
    log_offsets: dict[str, int] = field(default_factory=dict)

    @classmethod
    def plain(
        cls,
        root: Path,
        redis: RedisServer,
        s3: SeaweedS3Server,
        credentials: tuple[str, str],
        weights_dir: Path,
        port: int,
        env: dict[str, str],
    ) -> Stack:
        """A stack whose one API serves plain HTTP on ``port`` (the chaos runs' and the failover test's), with
        the test stack's environment and ``env`` on top; its logs in ``root/logs``. Nothing started yet."""
        access_key, secret_key = credentials
        return cls(
            base_url=f"http://127.0.0.1:{port}",
            tls_base_url="",
            tls_ca=root / "unused",
            env=stack_env(root, redis, s3, access_key, secret_key, weights_dir) | env,
            redis=redis,
            s3=s3,
            logs=root / "logs",
        )

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def api_urls(self) -> dict[str, tuple[str, ssl.SSLContext | bool]]:
        """The API processes: base URL and TLS verification for their /health (a stack without
        ``tls_base_url``, such as the chaos harness's, runs no TLS API)."""
        urls: dict[str, tuple[str, ssl.SSLContext | bool]] = {"api": (self.base_url, True)}
        if self.tls_base_url:
            urls["api-tls"] = (self.tls_base_url, ssl.create_default_context(cafile=str(self.tls_ca)))
        return urls

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a process of the stack (again, after a crash or a test's kill), with ``env`` on top of
        the stack's environment; ``ready`` waits for it."""
        log = self.logs / f"{name}.log"
        self.ready_lines_before[name] = log.read_bytes().count(READY) if log.exists() else 0
        env = self.env | {"KILN_WORKER_METRICS_PORT": str(self.metrics_ports.get(name, 0))} | (env or {})
        self.argv[name] = argv
        self.processes[name] = start_process(argv, env, log)
        return self.processes[name]

    def ready(self, name: str) -> None:
        """Wait until a process started by ``start`` serves: an API answers /health, a worker logs " ready."."""
        process, log = self.processes[name], self.logs / f"{name}.log"
        if name in self.api_urls:
            wait_until(
                lambda: process.poll() is not None or healthy(*self.api_urls[name]),
                60,
                what=f"the {name} process's /health",
            )
        else:
            wait_until(
                lambda: process.poll() is not None or log.read_bytes().count(READY) > self.ready_lines_before[name],
                300,
                what=f"the {name} process to be ready",
            )
        assert process.poll() is None, log.read_text()[-4000:]

    def start_gpu_worker(self) -> None:
        self.start("gpu-worker", GPU_WORKER_ARGV)
        self.ready("gpu-worker")

    def kill_gpu_worker(self, sig: int = signal.SIGKILL) -> None:
        worker = self.processes["gpu-worker"]
        os.killpg(worker.pid, sig)
        worker.wait(60)

    @contextmanager
    def gpu_worker_down(self, sig: int) -> Iterator[None]:
        """Stop the GPU worker with ``sig``; the block runs once it has exited, and a fresh worker
        is started when the block ends, whatever happened in it."""
        try:
            self.kill_gpu_worker(sig)
            yield
        finally:
            self.start_gpu_worker()

    @contextmanager
    def stand_in_worker(self, name: str, env: dict[str, str]) -> Iterator[str]:
        """For the block, a second worker with ``env`` on top of the stack's environment takes the
        jobs of worker ``name``'s queue, which ``name`` stops consuming (Celery's ``cancel_consumer``)
        until the block ends: settings for one test, without restarting ``name``. Yields the
        stand-in's process name (its log is ``logs/<name>.log``)."""
        argv = self.argv[name]
        queue, hostname = argv[argv.index("-Q") + 1], argv[argv.index("--hostname") + 1]
        stand_in = f"{name}-stand-in"
        with create_celery(self.settings()) as celery:
            node = host_format(hostname)
            try:
                # A busy solo worker answers once its job is done.
                answered = celery.control.cancel_consumer(queue, destination=[node], reply=True, timeout=120, limit=1)
                assert answered, f"{node} did not stop consuming {queue}"
                stand_in_argv = argv.copy()
                stand_in_argv[argv.index("--hostname") + 1] = f"stand-in-{hostname}"
                self.start(stand_in, stand_in_argv, env)
                self.ready(stand_in)
                yield stand_in
            finally:
                if stand_in in self.processes:
                    stop_process(self.processes.pop(stand_in))
                    del self.argv[stand_in]
                answered = celery.control.add_consumer(queue, destination=[node], reply=True, timeout=120, limit=1)
                if not answered:  # stopped, so that the next test's repair starts it afresh
                    stop_process(self.processes[name])
                    raise AssertionError(f"{node} did not consume {queue} again; stopped it")

    def restart_webhook_worker(self) -> None:
        stop_process(self.processes["webhooks"])
        self.start("webhooks", WEBHOOK_WORKER_ARGV)

    def repair(self) -> list[str]:
        """Bring back whatever is down (Redis, S3, API, workers) and open every step gate left
        closed, so that an earlier test's failure cannot fail this one. Returns what was repaired."""
        repaired = [server.name for server in (self.redis, self.s3) if not serving(server)]
        for server in (self.redis, self.s3):
            if server.name in repaired:
                server.stop()
                server.start()
        with redis.Redis.from_url(self.redis_url) as client:
            repaired += [f"step gate {name}" for name in open_every_gate(client)]
        down = [name for name, process in self.processes.items() if process.poll() is not None]
        for name in down:
            self.start(name, self.argv[name])
        for name in down:
            self.ready(name)
        if repaired or down:  # the API reconnects to restarted servers by itself: wait until it has
            wait_until(lambda: healthy(self.base_url), 60, what="the API's /health")
        return repaired + down

    def mark_logs(self) -> None:
        self.log_offsets = {path.stem: path.stat().st_size for path in self.logs.glob("*.log")}

    def logs_since_mark(self, max_lines: int = 40) -> dict[str, str]:
        """What each process logged since ``mark_logs``, its last ``max_lines`` lines each."""
        written = {}
        for path in sorted(self.logs.glob("*.log")):
            with path.open("rb") as log:
                log.seek(self.log_offsets.get(path.stem, 0))
                lines = log.read().decode(errors="replace").splitlines()
            if lines:
                written[path.stem] = "\n".join(lines[-max_lines:])
        return written

    def stop_all(self) -> None:
        stop_processes(self.processes.values())

    def settings(self, **overrides: object) -> Settings:
        """Settings reaching this stack's Redis and S3 as tenant A, for in-process apps and tools."""
        return Settings(
            _env_file=None,
            **{
                "redis_url": self.redis_url,
                "api_token": TOKEN_A,
                "s3_endpoint_url": self.env["KILN_S3_ENDPOINT_URL"],
                "s3_access_key": self.env["KILN_S3_ACCESS_KEY"],
                "s3_secret_key": self.env["KILN_S3_SECRET_KEY"],
                "s3_bucket": self.env["KILN_S3_BUCKET"],
                # As the stack's processes: kiln/instantid-xl is served.
                "allow_noncommercial_models": True,
            }
            | overrides,
        )

    def client(self, token: str | None = TOKEN_A) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


def stack_env(
    root: Path, redis: RedisServer, s3: SeaweedS3Server, access_key: str, secret_key: str, weights_dir: Path
) -> dict[str, str]:
    return os.environ | {
        "KILN_REDIS_URL": redis.url,
        "KILN_S3_ENDPOINT_URL": s3.endpoint_url,
        "KILN_S3_ACCESS_KEY": access_key,
        "KILN_S3_SECRET_KEY": secret_key,
        "KILN_S3_BUCKET": "kiln-test",
        "KILN_API_TOKEN": f"{TOKEN_A},{TOKEN_B}",
        "KILN_DATA_DIR": str(root / "data"),
        "KILN_WEIGHTS_PROFILE": "tiny",
        "KILN_WEIGHTS_DIR": str(weights_dir),
        # kiln/instantid-xl is served (its weights are non-commercial: off by default).
        "KILN_ALLOW_NONCOMMERCIAL_MODELS": "true",
        "KILN_PREDICTIONS_PAGE_SIZE": str(PAGE_SIZE),
        "KILN_PUBLIC_URL": "",
        "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
        "KILN_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(WEBHOOK_RETRY_SCHEDULE_S),
        "KILN_WEBHOOK_TIMEOUT_S": "5",
        "KILN_WEBHOOK_SENDING_PER_TENANT": str(WEBHOOK_SENDING_PER_TENANT),
        "KILN_LEASE_S": str(LEASE_S),
        "KILN_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        # Slow predictions wait at a gate the test opens (tests.support.step_gates), not on the CPU.
        "KILN_STEP_GATES": "true",
        "KILN_STORAGE_ATTEMPTS": "2",
        # As the container images log: one JSON object per line, with the prediction id.
        "KILN_LOG_FORMAT": "json",
        "KILN_WORKER_METRICS_HOST": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # One torch thread per worker: the stack's processes already share the machine's cores, and
        # torch's spinning thread pool slows tiny pipelines tenfold and more on a loaded 2-core machine.
        "OMP_NUM_THREADS": "1",
    }


@contextmanager
def running_stack(root: Path, weights_dir: Path) -> Iterator[Stack]:
    """The whole stack under ``root``, started in order and stopped (whatever happened) on leaving."""
    logs = root / "logs"
    logs.mkdir()
    access_key, secret_key = "kiln-test", secrets.token_hex(16)
    # Closed as make run starts it: every process of the stack must use the password in its URL.
    redis_server = RedisServer(root / "redis", password=secrets.token_urlsafe(16))
    with redis_server, SeaweedS3Server(root / "s3", access_key, secret_key) as s3:
        port, tls_port, ca_path = free_port(), free_port(), root / "ca.pem"
        stack = Stack(
            base_url=f"http://127.0.0.1:{port}",
            tls_base_url=f"https://127.0.0.1:{tls_port}",
            tls_ca=ca_path,
            env=stack_env(root, redis_server, s3, access_key, secret_key, weights_dir),
            redis=redis_server,
            s3=s3,
            logs=logs,
            metrics_ports=dict(zip(("gpu-worker", "sdxl-worker", "webhooks"), free_ports(3), strict=True)),
        )
        try:
            stack.start("webhooks", WEBHOOK_WORKER_ARGV)
            stack.start("api", uvicorn_argv(port))
            # The same API over TLS, as production serves it: Replicate's Python client only turns
            # https:// outputs into FileOutput objects.
            stack.start("api-tls", uvicorn_argv(tls_port) + tls_arguments(root, ca_path))
            # Both model workers load their pipelines at once.
            stack.start("sdxl-worker", SDXL_WORKER_ARGV)
            stack.start("gpu-worker", GPU_WORKER_ARGV)
            for name in ("gpu-worker", "sdxl-worker", "api", "api-tls"):
                stack.ready(name)
            yield stack
        finally:
            stack.stop_all()


def uvicorn_argv(port: int) -> list[str]:
    # A client's open stream or keep-alive connection holds a graceful shutdown for at most a second.
    return [
        *[python(), "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port)],
        *["--timeout-graceful-shutdown", "1"],
    ]


@contextmanager
def extra_api(stack: Stack, settings: Mapping[str, str], name: str) -> Iterator[str]:
    """Another API process on the stack's Redis and S3, its ``settings`` added to the stack's (logged to
    ``<name>.log``): its base URL, once healthy; stopped after."""
    port = free_port()
    process = start_process(uvicorn_argv(port), stack.env | dict(settings), stack.logs / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 60, what=f"the API process {name}")
        yield url
    finally:
        stop_process(process)


def tls_arguments(root: Path, ca_path: Path) -> list[str]:
    """A throwaway CA (trustme) and a certificate for 127.0.0.1 signed by it."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(ca_path))
    server_pem = root / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    return ["--ssl-keyfile", str(server_pem), "--ssl-certfile", str(server_pem)]


def healthy(base_url: str, verify: ssl.SSLContext | bool = True) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=2, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


def serving(server: RedisServer | SeaweedS3Server) -> bool:
    """Running and answering (a slow answer on a busy machine is not mistaken for a dead server)."""
    if not server.running:
        return False
    try:
        wait_until(server.is_ready, 30, what=f"{server.name} to answer")
    except AssertionError:
        return False
    return True
