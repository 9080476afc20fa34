"""The real launcher with stand-ins for the API and the worker: ``python -m tests.devstack.standin_launcher``.

Redis and SeaweedFS are real. The API is ``http.server`` serving a ``health`` file; the worker
sleeps after writing its argv and environment to ``<data_dir>/worker-standin.json``.
"""

from __future__ import annotations

from pathlib import Path

from deploy.devstack.launcher import Launcher
from deploy.devstack.programs import Program, StackContext, server_programs
from deploy.devstack.settings import StackSettings

API_ROOT = Path(__file__).parent / "fixtures" / "api-root"
WORKER_NAME = "worker-standin"
# A literal "%" must reach the program as written (Celery's --hostname uses %h).
WORKER_ARG = "standin@%h"
WORKER_SCRIPT = (
    "import json,os,sys,time;"
    "f=open(sys.argv[1],'w');json.dump({'argv':sys.argv[2:],'env':dict(os.environ)},f);f.close();"
    "time.sleep(3600)"
)


def standin_programs(settings: StackSettings):
    def factory(context: StackContext) -> list[Program]:
        api = Program(
            "api",
            [
                context.python,
                "-m",
                "http.server",
                str(context.api_port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(API_ROOT),
            ],
        )
        report = settings.data_dir / f"{WORKER_NAME}.json"
        worker = Program(WORKER_NAME, [context.python, "-c", WORKER_SCRIPT, str(report), WORKER_ARG], stop_wait_s=5)
        return [*server_programs(context), api, worker]

    return factory


def main() -> int:
    settings = StackSettings.from_env()
    return Launcher(settings, programs_factory=standin_programs(settings), health_timeout_s=60).run()


if __name__ == "__main__":
    raise SystemExit(main())
