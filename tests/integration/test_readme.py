"""The snippets of the README's "Try it", docs/clients.md and docs/webhooks.md, copy-pasted: they run
against a live Kiln as written (only ``KILN`` and ``TOKEN`` set, as the README says), with one token or
several."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support import REPO_ROOT, python
from tests.support.docs import README, block
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
CLIENTS = REPO_ROOT / "docs" / "clients.md"
WEBHOOKS = REPO_ROOT / "docs" / "webhooks.md"
CHECKOUT = {"PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / ".venv").symlink_to(REPO_ROOT / ".venv")
    return tmp_path


def run(argv: list[str], cwd, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_try_it_then_the_python_snippets(stack, workdir):
    env = {"PATH": os.environ["PATH"], "KILN": stack.base_url, "TOKEN": TOKEN_A, "HOME": str(workdir)}
    # The `kiln` script runs this checkout's code, wherever the venv's editable install points.
    shell = run(["bash", "-euo", "pipefail", "-c", block(README, "Try it", "sh")], workdir, env | CHECKOUT)
    assert "event: done" in shell and "event: output" in shell and "out.png" in shell
    assert (workdir / "out.png").read_bytes().startswith(b"\x89PNG")
    # kiln run printed the path of the file it saved; kiln batch submit the batch's id, then wrote its results.
    assert "out-0.png" in shell.splitlines() and (workdir / "out-0.png").read_bytes().startswith(b"\x89PNG")
    results = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in results] == [(1, "succeeded"), (2, "succeeded"), (3, "succeeded")]
    printed = run([python(), "-c", block(CLIENTS, "The official Replicate clients", "python")], workdir, env)
    assert printed.splitlines()[-1].startswith("done")
    run([python(), "-c", block(WEBHOOKS, "Webhooks", "python") + "\nassert secret.startswith('whsec_')"], workdir, env)


def test_a_likeness_from_a_saved_face(stack, workdir):
    """The README's InstantID example, against the test stack (which serves the non-commercial model)."""
    env = {"PATH": os.environ["PATH"], "KILN": stack.base_url, "TOKEN": TOKEN_A, "HOME": str(workdir)}
    printed = run(["bash", "-euo", "pipefail", "-c", block(README, "A likeness from a saved face", "sh")], workdir, env)
    status, image, face = printed.split()[-3:]
    assert status == "succeeded"
    assert image.split("?")[0].endswith("/out-0.png") and face.split("?")[0].endswith("/embeddings.safetensors")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("tok-a,tok-b", "tok-a"), ("alice=tok-a, bob=tok-b", "tok-a"), ("only-one==", "only-one==")],
)
def test_the_token_line_picks_one_token_of_several(setting, expected):
    line = next(line for line in block(README, "Try it", "sh").splitlines() if line.startswith("export TOKEN="))
    env = {"PATH": os.environ["PATH"], "KILN_API_TOKEN": setting, "PYTHONPATH": str(REPO_ROOT)}
    assert run(["bash", "-c", f'{line}\necho "$TOKEN"'], REPO_ROOT, env).strip() == expected
