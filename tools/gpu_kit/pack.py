"""``make gpu-kit``: download the wheels the GPU host lacks into ``.gpu-kit/`` and print the host command.

The host is offline, runs CPython 3.12 on x86-64 and already has torch, transformers and the rest of
``host-packages.txt``; the kit needs ``kit-packages.txt`` on top, at the versions installed here (the
ones Kiln is tested with) or the version an entry pins (``name==version``: GPU-only packages). Each is
fetched as a wheel for the host's interpreter and platform
(``pip download --only-binary``; pure-Python wheels fit any), stale wheels are removed, and
``.gpu-kit/kit.json`` records the commit and the wheels. ``run.sh`` installs them there with no
network. Usage: ``python -m tools.gpu_kit.pack [--dest .gpu-kit] [--python-version 3.12]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
KIT_PACKAGES = HERE / "kit-packages.txt"
HOST_PACKAGES = HERE / "host-packages.txt"
# manylinux tags pip may pick for the host (glibc 2.35+); pip matches a wheel's tag exactly.
PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# What travels to the host (tree and kit together) is capped at 64 MiB; the kit aims at half of it.
KIT_TARGET_BYTES = 30 * 2**20
TRAVEL_LIMIT_BYTES = 64 * 2**20
HOST_COMMAND = "bash tools/gpu_kit/run.sh"
# The two runs that fit a 15-minute device budget (docs/benchmarks.md, "Next GPU session"): A measures
# stock, eager and both compiled modes and brings the compile cache back; B, with that cache carried
# in .gpu-kit/compile-cache, the warm compile and the fast mode.
_MODELS = "kiln/sd2-depth2img kiln/ip-adapter-depth-xl"
_RUN_ARGS = (
    "--batch-sizes 1,4,8 --best-batch kiln/sd2-depth2img=8,kiln/ip-adapter-depth-xl=4 "
    "--compile-modes reduce-overhead,max-autotune-no-cudagraphs"
)
RUN_A = f"BUDGET_S=420 {HOST_COMMAND} --run A --models {_MODELS} {_RUN_ARGS} --compile-cache-out $OUT/compile-cache"
# Run B also times kiln/instantid-xl (from a saved face) eager at batch 1, after the others' batch 1.
RUN_B = (
    f"TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) BUDGET_S=420 {HOST_COMMAND} --run B --no-stock "
    f"--models {_MODELS} kiln/instantid-xl --batch-one-only kiln/instantid-xl {_RUN_ARGS} "
    "--compile-cache-in .gpu-kit/compile-cache"
)


def names(path: Path) -> list[str]:
    """Distribution names in a package list: whitespace-separated, ``#`` comments."""
    text = "\n".join(line.partition("#")[0] for line in path.read_text().splitlines())
    return text.split()


def canonical(entry: str) -> str:
    """The normalised distribution name of a list entry (``name`` or ``name==version``)."""
    return re.sub(r"[-_.]+", "-", entry.partition("==")[0]).lower()


def version(entry: str) -> str:
    """An entry's version: the one it pins (a distribution Kiln does not install: torchao, used on GPUs
    only), else the one installed here."""
    name, _, pin = entry.partition("==")
    return pin or importlib.metadata.version(name)


def pinned(entry: str) -> str:
    return f"{entry.partition('==')[0]}=={version(entry)}"


def download(requirements: list[str], dest: Path, python_version: str) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python_version,
            *platforms,
            "--dest",
            str(dest),
            *requirements,
        ],
        check=True,
    )


def wheel_distribution(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def remove_stale(dest: Path, wanted: dict[str, str]) -> None:
    """Drop wheels of distributions no longer listed, and other versions of listed ones."""
    for wheel in dest.glob("*.whl"):
        if wanted.get(wheel_distribution(wheel)) != wheel.name.split("-")[1]:
            wheel.unlink()


def tracked_tree_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    return sum(Path(name.decode()).stat().st_size for name in files if name and Path(name.decode()).is_file())


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout
    return f"{head}{'+dirty' if dirty.strip() else ''}" or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=".gpu-kit")
    parser.add_argument("--python-version", default="3.12", help="the host interpreter's X.Y")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    kit = names(KIT_PACKAGES)
    wanted_versions = {canonical(entry): version(entry) for entry in kit}
    remove_stale(dest, wanted_versions)
    download([pinned(name) for name in kit], dest, args.python_version)
    wheels = sorted(dest.glob("*.whl"))
    missing = set(wanted_versions) - {wheel_distribution(wheel) for wheel in wheels}
    if missing:
        raise SystemExit(f"no wheel downloaded for {sorted(missing)}")
    kit_bytes = sum(wheel.stat().st_size for wheel in wheels)
    (dest / "kit.json").write_text(
        json.dumps(
            {
                "commit": commit(),
                "python_version": args.python_version,
                "wheels": {wheel.name: wheel.stat().st_size for wheel in wheels},
                "bytes": kit_bytes,
            },
            indent=2,
        )
        + "\n"
    )
    tree_bytes = tracked_tree_bytes()
    print(
        f"{len(wheels)} wheels in {dest}/: {kit_bytes / 2**20:.1f} MiB (target {KIT_TARGET_BYTES / 2**20:.0f} MiB); "
        f"with the tracked tree ({tree_bytes / 2**20:.1f} MiB): {(kit_bytes + tree_bytes) / 2**20:.1f} MiB "
        f"of the {TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB that may travel"
    )
    if kit_bytes + tree_bytes > TRAVEL_LIMIT_BYTES:
        raise SystemExit("the kit and the tree exceed what may travel to the host")
    print(
        f"On the GPU host, from the repository root, with {dest}/ carried along (timeout_s 560 each):\n"
        f"  run A:\n    {RUN_A}\n"
        f"  then copy the returned compile-cache/ to {dest}/compile-cache/, and run B:\n    {RUN_B}\n"
        "(BUDGET_S=seconds sets a run's budget; results land in $OUT/gpu-truth.json and .md)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
