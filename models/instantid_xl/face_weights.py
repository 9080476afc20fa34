"""Where kiln/instantid-xl's face models come from, per weights profile: a folder of .onnx files.

- ``tiny`` and ``random-full``: antelopev2's layout with small random-weight models
  (``fake_weights.face_models``), built once under ``<weights_dir>/tiny/antelopev2``. The detector never
  finds a face, so these profiles serve the "no face" answer; face models are small in both.
- ``full``: ``settings.insightface_weights``, a local folder or a Hugging Face repository downloaded
  into the weights directory's hub cache.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from models.instantid_xl.fake_weights.face_models import write_random_antelopev2
from models.kit.fake_weights.building import builder_fingerprint, ensure_built
from models.kit.weights.loading import hub_cache_dir
from shared.settings import Settings

FACE_MODELS_FOLDER = "antelopev2"
# The modules that shape the layout's files: their source is part of the fingerprint.
_BUILDERS = ("models.instantid_xl.fake_weights.face_models", "models.instantid_xl.keypoints")


def face_models_dir(settings: Settings) -> Path:
    """The folder holding the face models' .onnx files for ``settings``' weights profile."""
    if settings.weights_profile in ("tiny", "random-full"):
        return random_face_models_dir(settings.resolved_weights_dir)
    return onnx_folder(_full_weights_root(settings))


def random_face_models_dir(weights_dir: Path) -> Path:
    """The random-weight antelopev2 layout under ``weights_dir``, built on first use."""
    # The saved bytes follow the builder's source and onnx's serialisation.
    fingerprint = f"{builder_fingerprint(*_BUILDERS)}-onnx{onnx.__version__}"
    return ensure_built(weights_dir / "tiny" / FACE_MODELS_FOLDER, fingerprint, write_random_antelopev2)


def _full_weights_root(settings: Settings) -> Path:
    """``insightface_weights`` as a local folder: as given, or its Hub snapshot (downloaded once)."""
    reference = settings.insightface_weights
    if Path(reference).expanduser().is_dir():
        return Path(reference).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(reference, cache_dir=hub_cache_dir(settings)))


def onnx_folder(root: Path) -> Path:
    """The folder under ``root`` that holds the .onnx files: ``root`` itself or, as in InsightFace's
    published zip, a nested ``antelopev2/``; the shallowest one wins."""
    found = sorted(root.rglob("*.onnx"), key=lambda path: (len(path.relative_to(root).parts), str(path)))
    if not found:
        raise FileNotFoundError(f"no .onnx face models under {root} (KILN_INSIGHTFACE_WEIGHTS)")
    return found[0].parent
