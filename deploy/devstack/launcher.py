"""The ``make run`` launcher: the whole stack under one foreground supervisord.

It decides ports and secrets, writes the supervisord config, relays Ctrl-C / SIGTERM to
supervisord (which stops every program), shows the programs' logs, and says how to reach the
API once it answers ``/health``.
"""

from __future__ import annotations

import fcntl
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from deploy.devstack.logs import LogFollower
from deploy.devstack.programs import Program, StackContext, default_programs, repo_root
from deploy.devstack.servers import RedisServer, SeaweedS3Server, port_is_free, write_private
from deploy.devstack.settings import StackSettings
from deploy.devstack.supervisor import SupervisorConfig, Supervisord
from shared.cli import REDIS_URL_FILE

ProgramsFactory = Callable[[StackContext], list[Program]]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` for the stack's lifetime: two stacks on one data dir would corrupt it."""
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"another Kiln stack is running with {lock_path.parent}; stop it or set KILN_DATA_DIR"
            ) from None
        yield


class Launcher:
    """Runs the stack in the foreground until supervisord exits; ``run()`` returns its status."""

    def __init__(
        self,
        settings: StackSettings,
        programs_factory: ProgramsFactory = default_programs,
        out: TextIO = sys.stdout,
        health_timeout_s: float = 300.0,
    ) -> None:
        self.settings = settings
        self.programs_factory = programs_factory
        self.out = out
        self.health_timeout_s = health_timeout_s
        self._out_lock = threading.Lock()
        self._stopping = threading.Event()

    def say(self, text: str) -> None:
        with self._out_lock:
            self.out.write(text + "\n")
            self.out.flush()

    def run(self) -> int:
        settings = self.settings
        with _exclusive(settings.data_dir / "devstack.lock"):
            if not port_is_free(settings.api_port):
                raise SystemExit(f"port {settings.api_port} is in use on 127.0.0.1; set KILN_PORT to another port")
            context, env = self._prepare_servers()
            programs = self.programs_factory(context)
            config = SupervisorConfig(settings.data_dir, settings.logs_dir, repo_root())
            config.write(programs)
            supervisord = Supervisord(config)
            follower = LogFollower({p.name: config.log_path(p.name) for p in programs}, self.out, self._out_lock)
            with self._relaying_signals(supervisord):
                supervisord.start(env)
                follower.start()
                try:
                    self._report_health(config, supervisord)
                finally:
                    # Normally supervisord exits on a relayed signal; after an error here, stop it.
                    supervisord.terminate()
                    status = supervisord.wait()
                    follower.stop()
                    for server in context.servers:
                        server.cleanup()
            return status

    def _prepare_servers(self) -> tuple[StackContext, dict[str, str]]:
        """Create the servers the environment does not point at, and the programs' environment."""
        settings = self.settings
        redis = None
        if not settings.external_redis:
            redis = RedisServer(settings.data_dir / "redis", password=settings.redis_password)
            # For `kiln tokens ...` run beside the stack (shared.cli reads it when KILN_REDIS_URL is unset).
            write_private(settings.data_dir / REDIS_URL_FILE, redis.url + "\n")
        s3 = None
        if not settings.s3_endpoint_url:
            s3 = SeaweedS3Server(
                settings.data_dir / "s3", settings.s3_access_key, settings.s3_secret_key, buckets=[settings.s3_bucket]
            )
        env = settings.child_environment(
            redis_url=redis.url if redis else settings.redis_url,
            s3_endpoint_url=s3.endpoint_url if s3 else settings.s3_endpoint_url,
        )
        context = StackContext(api_port=settings.api_port, redis=redis, s3=s3)
        for server in context.servers:
            server.prepare()
            env = server.child_env(env)
        return context, env

    @contextmanager
    def _relaying_signals(self, supervisord: Supervisord) -> Iterator[None]:
        """Ctrl-C and SIGTERM stop supervisord, which stops every program before it exits."""

        def relay(signum: int, frame: object) -> None:
            self._stopping.set()
            supervisord.terminate()

        previous = {sig: signal.signal(sig, relay) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _report_health(self, config: SupervisorConfig, supervisord: Supervisord) -> None:
        """Once the API is healthy, say how to use it; wait for supervisord to exit either way."""
        settings = self.settings
        if self._wait_healthy(supervisord):
            self._announce(config)
        elif supervisord.running() and not self._stopping.is_set():
            self.say(
                f"==> {settings.api_url}/health does not answer 200 yet; the stack keeps running."
                f" Look at {settings.logs_dir}/ or `{config.status_hint}`."
            )
        supervisord.wait()

    def _wait_healthy(self, supervisord: Supervisord) -> bool:
        deadline = time.monotonic() + self.health_timeout_s
        url = self.settings.api_url + "/health"
        while time.monotonic() < deadline and supervisord.running() and not self._stopping.is_set():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        return False

    def _announce(self, config: SupervisorConfig) -> None:
        settings = self.settings
        tokens = settings.tokens
        example = next((info.token for info in tokens if info.token), "<token>")
        self.say(
            "\n".join(
                [
                    "",
                    f"==> Kiln is up at {settings.api_url}",
                    *(f"    API token {info.name}: {info.token or '(given as its sha256 digest)'}" for info in tokens),
                    "    More tokens: `kiln tokens create NAME` (list, revoke: `kiln tokens --help`)",
                    f"    Web UI:    {settings.api_url}/   (the playground: paste a token once)",
                    f'    Try:       curl -H "Authorization: Bearer {example}" '
                    f"{settings.api_url}/v1/predictions   (more in the README)",
                    f"    Logs:      {settings.logs_dir}/",
                    f"    Status:    {config.status_hint}",
                    "    Ctrl-C stops everything.",
                    "",
                ]
            )
        )
