"""supervisord as the stack's process runner: its config file, and the foreground process itself."""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.devstack.programs import Program

# sun_path holds 108 bytes with the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107
_PR_SET_PDEATHSIG = 1


def _quote(value: str) -> str:
    """``value`` as an ini value supervisord reads back unchanged.

    supervisord expands ``%(name)s`` (so ``%`` is written ``%%``) and ends a value at a line
    break or at ``;`` or ``#`` after whitespace (an inline comment), which cannot be escaped.
    """
    if "\n" in value or re.search(r"\s[;#]", value):
        raise ValueError(f"supervisord cannot read this value back: {value!r}")
    return value.replace("%", "%%")


class SupervisorConfig:
    """The files of one supervisord instance, all under the stack's data dir."""

    def __init__(self, data_dir: Path, logs_dir: Path, directory: Path) -> None:
        self.data_dir = data_dir
        self.logs_dir = logs_dir
        self.directory = directory
        self.path = data_dir / "supervisord.conf"
        self.socket_path = data_dir / "supervisor.sock"

    def log_path(self, program_name: str) -> Path:
        return self.logs_dir / f"{program_name}.log"

    def render(self, programs: Sequence[Program]) -> str:
        """The config text: supervisord in the foreground, a control socket, one section per program."""
        sections = [
            "[supervisord]",
            "nodaemon=true",
            f"logfile={_quote(str(self.logs_dir / 'supervisord.log'))}",
            "logfile_maxbytes=10MB",
            "logfile_backups=2",
            f"pidfile={_quote(str(self.data_dir / 'supervisord.pid'))}",
            f"directory={_quote(str(self.directory))}",
            "identifier=kiln-devstack",
            "",
            "[unix_http_server]",
            f"file={_quote(str(self.socket_path))}",
            "chmod=0700",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_quote(str(self.socket_path))}",
            "",
        ]
        for program in programs:
            sections += self._program_section(program)
        return "\n".join(sections)

    def _program_section(self, program: Program) -> list[str]:
        return [
            f"[program:{program.name}]",
            f"command={_quote(shlex.join(program.command))}",
            f"directory={_quote(str(self.directory))}",
            f"priority={program.priority}",
            "autostart=true",
            "autorestart=true",
            # A program that dies at once is retried this many times before supervisord gives up.
            "startsecs=1",
            "startretries=10",
            "stopsignal=TERM",
            f"stopwaitsecs={program.stop_wait_s}",
            # Stop and kill whole process groups, so no grandchild outlives the stack.
            "stopasgroup=true",
            "killasgroup=true",
            # What a program writes is its owner's only (Redis's AOF holds every secret).
            "umask=077",
            "redirect_stderr=true",
            f"stdout_logfile={_quote(str(self.log_path(program.name)))}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
            "",
        ]

    def write(self, programs: Sequence[Program]) -> None:
        if len(str(self.socket_path)) > _MAX_UNIX_SOCKET_PATH:
            raise SystemExit(
                f"the data dir path is too long for supervisord's control socket ({self.socket_path}); "
                "use a shorter KILN_DATA_DIR"
            )
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.render(programs))

    @property
    def status_hint(self) -> str:
        """The shell command that shows the programs' states."""
        return shlex.join(self.ctl_command("status"))

    def ctl_command(self, *args: str) -> list[str]:
        """The ``supervisorctl`` argv that talks to this instance (``status``, ``pid api``, ...)."""
        return [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(self.path), *args]


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the launcher dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisord:
    """A foreground ``supervisord`` in its own session; the launcher relays signals to it."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, env: Mapping[str, str]) -> None:
        """Run supervisord with ``env``, which every program inherits."""
        self._process = subprocess.Popen(
            [str(Path(sys.executable).parent / "supervisord"), "-c", str(self.config.path)],
            stdin=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def terminate(self) -> None:
        """Ask supervisord to stop every program, then itself."""
        if self.running():
            assert self._process is not None
            os.kill(self._process.pid, signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        assert self._process is not None
        return self._process.wait(timeout)
