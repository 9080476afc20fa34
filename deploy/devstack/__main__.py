"""``python -m deploy.devstack`` (``make run``): Redis, SeaweedFS, the API and the workers, in the foreground."""

from __future__ import annotations

from deploy.devstack.launcher import Launcher
from deploy.devstack.servers import ServerError
from deploy.devstack.settings import StackSettings


def main() -> int:
    try:
        return Launcher(StackSettings.from_env()).run()
    except ServerError as exc:
        raise SystemExit(f"kiln devstack: {exc}") from None


if __name__ == "__main__":
    raise SystemExit(main())
