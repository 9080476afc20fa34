"""The tiny weights profile: deterministic builds, built once per folder, rebuilt when the builder changes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from models.kit.fake_weights.building import MARKER_NAME, ensure_built
from models.kit.weights.loading import weights_source
from models.sd2_depth2img.fake_weights import build_tiny_sd2_depth2img, ensure_tiny_sd2_depth2img


def _no_random_full(weights_dir: Path, device: torch.device) -> Path:
    raise AssertionError("the random-full profile was not asked for")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_building_twice_gives_identical_files(tmp_path: Path) -> None:
    build_tiny_sd2_depth2img(tmp_path / "one")
    build_tiny_sd2_depth2img(tmp_path / "two")
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert "unet/diffusion_pytorch_model.safetensors" in one
    assert "depth_estimator/model.safetensors" in one
    assert one == two


def test_ensure_builds_into_the_profile_folder_once(weights_dir: Path) -> None:
    folder = ensure_tiny_sd2_depth2img(weights_dir)
    assert folder == weights_dir / "tiny" / "sd2-depth2img"
    assert (folder / "model_index.json").is_file()
    built_at = (folder / MARKER_NAME).stat().st_mtime_ns
    assert ensure_tiny_sd2_depth2img(weights_dir) == folder
    assert (folder / MARKER_NAME).stat().st_mtime_ns == built_at


def _writer(calls: list[str], content: str, delay: float = 0.0):
    def build(folder: Path) -> None:
        calls.append(content)
        time.sleep(delay)
        (folder / "weights.bin").write_text(content)

    return build


def test_changed_fingerprint_rebuilds_and_replaces_the_folder(tmp_path: Path) -> None:
    dest, calls = tmp_path / "model", []
    ensure_built(dest, "v1", _writer(calls, "old"))
    ensure_built(dest, "v1", _writer(calls, "unused"))
    ensure_built(dest, "v2", _writer(calls, "new"))
    assert calls == ["old", "new"]
    assert (dest / "weights.bin").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "model.lock"]


def test_folder_without_marker_counts_as_unbuilt(tmp_path: Path) -> None:
    dest, calls = tmp_path / "model", []
    dest.mkdir()
    (dest / "partial.bin").write_text("left by a crashed build")
    ensure_built(dest, "v1", _writer(calls, "fresh"))
    assert calls == ["fresh"]
    assert sorted(path.name for path in dest.iterdir()) == [MARKER_NAME, "weights.bin"]


def test_a_killed_build_leaves_nothing_behind_after_the_next(tmp_path: Path) -> None:
    (tmp_path / ".model.abc123").mkdir()
    (tmp_path / ".model.abc123" / "half.bin").write_text("staging of a killed build")
    ensure_built(tmp_path / "model", "v1", _writer([], "fresh"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "model.lock"]


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    dest, calls = tmp_path / "model", []
    threads = [
        threading.Thread(target=ensure_built, args=(dest, "v1", _writer(calls, f"build {i}", delay=0.2)))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert (dest / "weights.bin").read_text() == calls[0]


def test_tokenizer_covers_any_prompt_without_unknown_tokens(weights_dir: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(ensure_tiny_sd2_depth2img(weights_dir) / "tokenizer")
    assert tokenizer.model_max_length == 77
    ids = tokenizer("A photo of the red cat — Ünïcode 😀 #42").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.convert_ids_to_tokens(tokenizer("the cat").input_ids)[1:-1] == ["the</w>", "cat</w>"]


def test_the_full_profile_loads_its_reference_and_builds_nothing(make_settings, tmp_path: Path) -> None:
    settings = make_settings(weights_profile="full", weights_dir=tmp_path, sd2_depth2img_weights="org/model")
    assert (
        weights_source(settings, settings.sd2_depth2img_weights, ensure_tiny_sd2_depth2img, _no_random_full)
        == "org/model"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_tiny_profile_loads_the_built_folder(make_settings, weights_dir: Path) -> None:
    settings = make_settings()
    source = weights_source(settings, settings.sd2_depth2img_weights, ensure_tiny_sd2_depth2img, _no_random_full)
    assert source == str(weights_dir / "tiny" / "sd2-depth2img")


def test_the_random_full_profile_builds_its_folder_on_the_configured_device(make_settings, tmp_path: Path) -> None:
    settings = make_settings(weights_profile="random-full", weights_dir=tmp_path, device="cpu")
    built = []

    def ensure_random_full(weights_dir: Path, device: torch.device) -> Path:
        built.append((weights_dir, device))
        return weights_dir / "random-full" / "sd2-depth2img"

    source = weights_source(settings, settings.sd2_depth2img_weights, ensure_tiny_sd2_depth2img, ensure_random_full)
    assert source == str(tmp_path / "random-full" / "sd2-depth2img")
    assert built == [(tmp_path, torch.device("cpu"))]
