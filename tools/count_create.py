"""CPU instructions per single create, counted by valgrind: ``python -m tools.count_create [--creates N]``.

Timings of a create on a shared 2-core machine move by ±10 % from run to run; instructions do not. This
runs ``tools.profile_create``'s in-process app (the bench's XL create with two 64x64 data URIs, 16 clients
at once, against a private redis-server) under ``valgrind --tool=callgrind`` twice, once with ``N`` creates
after the warm-up and once with ``3N``, and prints the difference divided by ``2N``: what one create costs
the API process, start-up and warm-up left out. redis-server and the intake processes are not counted
(valgrind does not follow children). Needs valgrind; takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from api.app import create_app
from deploy.devstack.servers import RedisServer
from tools.profile_create import _creates, _settings

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


async def _run(redis_url: str, creates: int) -> None:
    app = create_app(_settings(redis_url))
    async with app.router.lifespan_context(app):
        await _creates(app, 400)  # warm-up
        await _creates(app, creates)


def _instructions(creates: int, workdir: Path) -> int:
    """Instructions the API process ran in all for ``creates`` creates after the warm-up."""
    out = workdir / f"callgrind.{creates}"
    found = subprocess.run(
        [
            *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
            *(sys.executable, "-m", "tools.count_create", "--child", str(creates)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    totals = _COLLECTED.findall(found.stderr)
    if not totals:
        raise RuntimeError(f"valgrind reported no instruction count:\n{found.stderr[-2000:]}")
    return int(totals[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=320, help="N: runs of N and 3N creates are compared")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # the process valgrind runs
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-count-") as scratch:
        if options.child is not None:
            with RedisServer(Path(scratch)) as redis_server:
                asyncio.run(_run(redis_server.url, options.child))
            return 0
        few, many = (_instructions(count, Path(scratch)) for count in (options.creates, 3 * options.creates))
    per_create = (many - few) / (2 * options.creates)
    print(f"{per_create / 1e6:.3f} M instructions per single create (API process, in-process app, 16 at once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
