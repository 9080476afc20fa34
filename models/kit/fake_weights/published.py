"""Published ``config.json`` files kept in the repository: read one, digest a set (for fingerprints).

The random-full weights profile builds the full-size architectures from them; each model folder keeps
its own in ``configs/`` with a README naming their sources.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_config(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def configs_digest(paths: Iterable[Path]) -> str:
    """A digest of the configs' names and contents: part of a builder's fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]
