"""The webhook worker is its own part: its entry module imports neither torch nor diffusers (nor
anything the API image lacks), starts fast, and registers the delivery task; the GPU worker keeps
the same task, so it can still deliver when told to consume the ``webhooks`` queue."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.scheduling import queues
from tests.support import REPO_ROOT

HEAVY = {"torch", "diffusers", "transformers", "controlnet_aux", "accelerate", "torchvision"}
# What the API image copies (deploy/docker/Dockerfile.api): the webhook worker may import only these of Kiln's packages.
IN_THE_API_IMAGE = {"api", "shared", "webhook_worker"}
KILN_PACKAGES = {"api", "shared", "worker", "webhook_worker", "deploy", "tests"}

IMPORT_ENTRY = """
import json, sys, time
started = time.perf_counter()
import webhook_worker.celery_app as entry
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "modules": sorted({name.split(".")[0] for name in sys.modules}),
                  "tasks": sorted(name for name in entry.app.tasks if name.startswith("kiln."))}))
"""


def import_in_a_fresh_interpreter(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "KILN_DATA_DIR": "/tmp/kiln-webhook-worker", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_webhook_worker_imports_neither_torch_nor_diffusers() -> None:
    found = import_in_a_fresh_interpreter(IMPORT_ENTRY)
    # A number to watch (the target is at most 0.5 s), not a timed assertion: a busy machine varies.
    print(f"import webhook_worker.celery_app: {found['seconds']:.3f} s")
    assert set(found["modules"]) & HEAVY == set()
    assert set(found["modules"]) & KILN_PACKAGES <= IN_THE_API_IMAGE
    assert found["tasks"] == [queues.DELIVER_WEBHOOK_TASK]


def test_the_gpu_worker_still_delivers_webhooks_when_it_consumes_their_queue() -> None:
    tasks = import_in_a_fresh_interpreter("""
import json
import worker.celery_app as entry
print(json.dumps({"tasks": sorted(name for name in entry.app.tasks if name.startswith("kiln."))}))
""")["tasks"]
    assert tasks == sorted([queues.PREDICT_TASK, queues.DELIVER_WEBHOOK_TASK])
