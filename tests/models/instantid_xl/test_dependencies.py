"""One cv2: insightface is installed without its dependencies (its metadata asks for opencv-python, which
would clash with controlnet-aux's opencv-python-headless), everywhere kiln is installed."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.utils import canonicalize_name

from tests.deploy.test_lock import locked
from tests.support import REPO_ROOT
from tests.support.deploy import DOCKER_DIR


def test_the_lock_pins_insightface_and_only_the_headless_opencv():
    pins = locked()
    assert "insightface" in pins and "onnxruntime" in pins and "opencv-python-headless" in pins
    assert "opencv-python" not in pins


def test_cv2_comes_from_the_headless_opencv_alone():
    owners = {canonicalize_name(name) for name in metadata.packages_distributions()["cv2"]}
    assert owners == {"opencv-python-headless"}


def test_make_install_make_lock_and_the_worker_image_install_insightface_without_dependencies():
    makefile = (REPO_ROOT / "Makefile").read_text()
    dockerfile = (DOCKER_DIR / "Dockerfile.worker").read_text()
    no_deps = r"pip install[^\n]*--no-deps[^\n]*"
    assert re.search(r"^NO_DEPS := '?insightface\b", makefile, flags=re.M)
    install, lock = makefile.split("\nlock:")
    assert re.search(no_deps + r"\$\(NO_DEPS\)", install.split("\n$(STAMP):")[1])
    assert re.search(no_deps + r"\$\(NO_DEPS\)", lock.split("\n\n")[0])
    assert re.search(no_deps + "insightface", dockerfile)
