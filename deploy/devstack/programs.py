"""The programs of the local stack, as supervisord will run them: Redis and SeaweedFS (unless
external), the API, and a Celery worker per row of ``WORKERS`` (to run another, add a row).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from deploy.devstack.servers import ManagedServer
from shared.scheduling import queues

# Servers start first; supervisord stops programs in the reverse order.
SERVER_PRIORITY = 100
APP_PRIORITY = 200


@dataclass(frozen=True)
class Program:
    """One supervised process: its name (also its log file's), argv and start order."""

    name: str
    command: list[str]
    priority: int = APP_PRIORITY
    # How long a stop waits for the process to exit before it is killed.
    stop_wait_s: int = 15


# Celery apps (``-A``): the GPU worker, and the webhook worker that imports no torch.
GPU_WORKER_APP = "worker.celery_app:app"
WEBHOOK_WORKER_APP = "webhook_worker.celery_app:app"


@dataclass(frozen=True)
class WorkerSpec:
    """A Celery worker: its app, the queues it consumes and how it runs tasks."""

    name: str
    queues: tuple[str, ...]
    hostname: str
    pool: str = "solo"
    concurrency: int = 1
    app: str = GPU_WORKER_APP


WORKERS: tuple[WorkerSpec, ...] = (
    # CPU with the tiny profile locally; the solo pool keeps pipelines in the one process.
    WorkerSpec("worker-sd2", (queues.SD2_DEPTH,), "gpu-sd2@%h"),
    # Both SDXL models in one process: they share one SDXL base in memory.
    WorkerSpec("worker-sdxl", (queues.SDXL,), "gpu-sdxl@%h"),
    # Webhook delivery is network-bound: threads, and the poller that re-sends due deliveries.
    WorkerSpec(
        "worker-webhooks", (queues.WEBHOOKS,), "webhooks@%h", pool="threads", concurrency=8, app=WEBHOOK_WORKER_APP
    ),
)


@dataclass(frozen=True)
class StackContext:
    """What program factories need: the servers to run (None when external) and where things are."""

    api_port: int
    redis: ManagedServer | None
    s3: ManagedServer | None
    python: str = sys.executable

    @property
    def servers(self) -> list[ManagedServer]:
        """The servers the stack runs itself, Redis first."""
        return [server for server in (self.redis, self.s3) if server is not None]


def server_programs(context: StackContext) -> list[Program]:
    """Redis and SeaweedFS, unless external, run from the same command lines the tests use."""
    return [Program(server.name, server.command_line(), priority=SERVER_PRIORITY) for server in context.servers]


def api_program(context: StackContext) -> Program:
    """The HTTP API under uvicorn, on loopback."""
    return Program(
        "api",
        [
            context.python,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(context.api_port),
        ],
    )


def worker_program(context: StackContext, spec: WorkerSpec) -> Program:
    """A Celery worker for ``spec``; a warm shutdown finishes the running task first."""
    return Program(
        spec.name,
        [
            context.python,
            "-m",
            "celery",
            "-A",
            spec.app,
            "worker",
            "--pool",
            spec.pool,
            "--concurrency",
            str(spec.concurrency),
            "-Q",
            ",".join(spec.queues),
            "--hostname",
            spec.hostname,
            "--loglevel",
            "INFO",
        ],
        stop_wait_s=60,
    )


def default_programs(context: StackContext) -> list[Program]:
    """Redis and SeaweedFS unless external, then the API and every worker in ``WORKERS``."""
    return [*server_programs(context), api_program(context), *(worker_program(context, spec) for spec in WORKERS)]


def repo_root() -> Path:
    """The checkout this package runs from: the working directory of every program."""
    return Path(__file__).resolve().parents[2]
