"""The ``kiln`` client commands on the real stack, run as a user runs them (a subprocess with
``KILN_URL`` and ``KILN_TOKEN``): ``kiln run`` saves its output file; ``kiln batch submit --wait``
of a 1,000-line file exits 0 and writes 1,000 result lines in the file's order."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, png_bytes, python
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration
LINES = 1_000


@pytest.fixture
def token(stack) -> str:
    """A tenant of its own: a 1,000-item batch fills its prediction list."""
    return new_token(stack.redis_url, "cli")[1]


def kiln(stack, token: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "PYTHONPATH": str(REPO_ROOT),
        "KILN_URL": stack.base_url,
        "KILN_TOKEN": token,
    }
    return subprocess.run(
        [python(), "-m", "shared.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_run_uploads_the_image_and_saves_the_output_file(stack, token, tmp_path):
    (tmp_path / "photo.png").write_bytes(png_bytes(64, 64))
    inputs = ["-i", "prompt=a brick kiln", "-i", "input_image=@photo.png", "-i", "num_inference_steps=2"]
    done = kiln(stack, token, "run", "kiln/sd2-depth2img", *inputs, "-i", "seed=3", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = done.stdout.split()
    assert Path(path) == Path("out") / "out-0.png"
    assert (tmp_path / path).read_bytes().startswith(b"\x89PNG")
    # The prediction is the tenant's, with the uploaded file as its input.
    with client_for(stack.base_url, token) as client:
        (made,) = client.get("/v1/predictions").json()["results"]
    assert made["status"] == "succeeded" and made["input"]["seed"] == 3

    refused = kiln(stack, token, "run", "kiln/sd2-depth2img", "-i", "num_inference_steps=9999", cwd=tmp_path)
    assert refused.returncode == 2 and "HTTP 422" in refused.stderr and "num_inference_steps" in refused.stderr
    unknown = kiln(stack, "not-a-token", "predictions", "list", cwd=tmp_path)
    assert unknown.returncode == 2 and "HTTP 401" in unknown.stderr


def test_batch_submit_waits_for_1000_lines_and_writes_their_results_in_order(stack, token, tmp_path):
    with client_for(stack.base_url, token) as client:
        image = client.post("/v1/files", files={"content": ("ref.png", png_bytes(64, 64), "image/png")})
    assert image.status_code == 201, image.text
    image_url = image.json()["urls"]["get"]
    # Bare inputs (--model names the model), a distinct seed each; one denoising step (strength 1) on 64x64.
    lines = [
        {"prompt": "batch", "input_image": image_url, "num_inference_steps": 1, "prompt_strength": 1.0, "seed": n}
        for n in range(LINES)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = ["batch", "submit", "in.jsonl", "--model", "kiln/sd2-depth2img", "--wait", "--results", "out.jsonl"]
    done = kiln(stack, token, *argv, cwd=tmp_path, timeout=900)
    written = (tmp_path / "out.jsonl").read_text() if (tmp_path / "out.jsonl").exists() else ""
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + written[:1000]
    batch_id = done.stdout.strip()
    results = [json.loads(line) for line in written.splitlines()]
    assert len(results) == LINES
    assert [r["line"] for r in results] == list(range(1, LINES + 1))
    assert {r["status"] for r in results} == {"succeeded"} and all(r["output"] for r in results)
    with client_for(stack.base_url, token) as client:
        first_page = client.get(f"/v1/batches/{batch_id}/predictions").json()["results"]
    assert [p["input"]["seed"] for p in first_page] == list(range(len(first_page)))
    assert [p["id"] for p in first_page] == [r["id"] for r in results[: len(first_page)]]

    shown = kiln(stack, token, "batch", "get", batch_id, cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["counts"]["succeeded"] == LINES
