"""Which of the kit's imports the GPU host could not satisfy: recorded here, on a machine that has everything.

``record()`` (called first thing in ``__main__``) puts a finder at the head of ``sys.meta_path`` that
finds nothing itself and notes every top-level import with the module that asked for it.
``foreign_imports()`` then lists those the host would refuse: asked for by Kiln's own code or by a
distribution the kit carries, installed here, and neither in the standard library, Kiln,
``host-packages.txt`` nor ``kit-packages.txt``. Imports that host packages make of their own
dependencies are the host image's business and are not judged. The CPU test expects the list to be empty.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import sys
import threading
from types import FrameType

from tools.gpu_kit.pack import HOST_PACKAGES, KIT_PACKAGES, canonical, names

FIRST_PARTY = frozenset({"api", "shared", "models", "worker", "tests", "deploy"})
# Optional imports of carried packages: each importer guards it and works without it, as on the host.
OPTIONAL = {
    "cryptography": "redis: TLS certificate helpers",
    "opentelemetry": "redis: observability hooks",
    "hiredis": "redis: the C reply parser",
    "cffi": "billiard: a faster spawn path",
    "greenlet": "celery: greenlet-aware thread locals",
    "backports": "kombu: the zstd codec's backport for Pythons before 3.14",
}


class _Recorder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def find_spec(self, fullname, path, target=None):
        if path is None and "." not in fullname:
            importer = _importer(sys._getframe(1))
            if importer is not None:
                with self._lock:
                    self.seen.add((importer, fullname))
        return None


def _importer(frame: FrameType | None) -> str | None:
    """The module whose code is importing: the first frame outside the import machinery."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (
            filename.startswith("<frozen importlib")
            or filename.endswith(("importlib/__init__.py", "importlib/util.py"))
        ):
            return frame.f_globals.get("__name__")
        frame = frame.f_back
    return None


_recorder = _Recorder()


def record() -> None:
    if _recorder not in sys.meta_path:
        sys.meta_path.insert(0, _recorder)


def foreign_imports() -> list[str]:
    """``"importer -> module (distribution)"`` for each import the host would refuse."""
    owners = importlib.metadata.packages_distributions()
    kit = {canonical(name) for name in names(KIT_PACKAGES)}
    available = kit | {canonical(name) for name in names(HOST_PACKAGES)}

    def distributions(module: str) -> set[str]:
        return {canonical(dist) for dist in owners.get(module.partition(".")[0], [])}

    judged = []
    with _recorder._lock:
        seen = sorted(_recorder.seen)
    for importer, module in seen:
        importer_top = importer.partition(".")[0]
        if importer_top not in FIRST_PARTY and not distributions(importer_top) & kit:
            continue
        if module in sys.stdlib_module_names or module in FIRST_PARTY or module in OPTIONAL:
            continue
        provided_by = distributions(module)
        if provided_by and not provided_by & available:
            judged.append(f"{importer} -> {module} ({', '.join(sorted(provided_by))})")
    return judged
