"""The official Replicate JavaScript client (``replicate`` on npm) against Kiln, over TLS."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support import REPO_ROOT, png_bytes
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
JS_DIR = REPO_ROOT / "tests" / "js"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the JavaScript client test")
    if not (JS_DIR / "node_modules" / "replicate").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True, timeout=300
        )
    return node


def test_js_client_through_every_call(stack, node, tmp_path):
    image = tmp_path / "input.png"
    image.write_bytes(png_bytes(128, 128))
    result = subprocess.run(
        [node, "run_kiln.mjs", stack.tls_base_url, TOKEN_A, str(image)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": shutil.os.environ["PATH"], "NODE_EXTRA_CA_CERTS": str(stack.tls_ca)},
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["run"] == {"count": 1, "pngMagic": "PNG"}
    assert seen["wait"] == {"status": "succeeded", "outputs": 1}
    assert seen["webhook"] == {"valid": True, "status": "succeeded"}
    stream = seen["stream"]
    assert stream["events"] == ["done", "logs", "output"] and stream["everyEventHasAnId"]
    assert (stream["outputs"], stream["pngMagic"]) == (1, "PNG")
    assert (stream["last"]["event"], stream["last"]["data"]) == ("done", "{}")
    catalog = seen["catalog"]
    assert (catalog["accountType"], catalog["named"], catalog["hardware"]) == ("user", True, ["gpu"])
    assert catalog["collections"] == ["kiln"] and "kiln/sd2-depth2img" in catalog["collectionModels"]
    assert catalog["search"] == ["kiln/ip-adapter-openpose-xl"]
    assert seen["deployments"] == {
        "owner": True,
        "releases": [1, 1, 2],
        "maxInstances": 2,
        "listed": True,
        "prediction": ["succeeded", True],
        "deleted": True,
    }
    # The deadline is set as the request arrives, a moment before the prediction is made.
    assert 240 <= seen["cancelAfter"]["deadlineAfterS"] <= 300 and seen["cancelAfter"]["status"] == "succeeded"
    paging = seen["paging"]
    assert paging["filePages"] >= 2 and paging["filesUnique"] and paging["files"] >= 5 and paging["predictionsSeen"]
