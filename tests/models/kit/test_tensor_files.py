"""Safetensors files in a worker (``models.kit.tensor_files``): fetched once per content, checked by
their header before anything is parsed, never unpickled, bounded in bytes; tensors written back as an
output file."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.kit.contract import NamedFile
from models.kit.tensor_files import (
    TensorFile,
    TensorFileCache,
    TensorFileError,
    load_tensor_file,
    process_tensor_file_cache,
    safetensors_output,
)
from shared.inputs.safetensors_files import check_tensors
from tests.support.fakes import FakeContext

EMBEDDING = save_safetensors({"face_embedding": torch.arange(512, dtype=torch.float32)}, metadata={"model": "x"})
URL = "https://files.example/face.safetensors"
UPLOAD = "http://kiln.test/v1/files/" + "a" * 26
OTHER_URL = "https://mirror.example/same-face.safetensors"


def face_check(header: Mapping[str, Any]) -> None:
    check_tensors(header, {"face_embedding": ({"F32"}, [512])})


def load(uri: str, ctx: FakeContext, cache: TensorFileCache, **overrides: Any) -> TensorFile:
    options: dict[str, Any] = {"max_bytes": 1 << 20, "timeout_s": 5.0, "check": face_check, "name": "face_embedding"}
    return load_tensor_file(uri, ctx, cache, **options | overrides)


def test_a_file_is_parsed_with_its_metadata_and_cached_by_the_hash_of_its_bytes() -> None:
    cache = TensorFileCache(1 << 20)
    ctx = FakeContext(files={URL: EMBEDDING, OTHER_URL: EMBEDDING})
    first = load(URL, ctx, cache)
    assert first.sha256 == hashlib.sha256(EMBEDDING).hexdigest() and first.metadata == {"model": "x"}
    assert torch.equal(first.tensors["face_embedding"], torch.arange(512, dtype=torch.float32))
    assert "Loaded face_embedding (0.0 MiB, 1 tensors)" in ctx.lines
    # The same bytes behind another URL: fetched (their digest is unknown until then), not parsed again.
    again = FakeContext(files={OTHER_URL: EMBEDDING})
    assert load(OTHER_URL, again, cache) is first
    assert again.loaded == [OTHER_URL] and again.lines == ["Using cached face_embedding"]


def test_a_cached_upload_is_not_even_read_again() -> None:
    cache = TensorFileCache(1 << 20)
    first = load(UPLOAD, FakeContext(files={UPLOAD: EMBEDDING}, uploaded=frozenset({UPLOAD})), cache)
    again = FakeContext(files={UPLOAD: EMBEDDING}, uploaded=frozenset({UPLOAD}))
    assert load(UPLOAD, again, cache) is first and again.loaded == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pickle.dumps({"face_embedding": [0.0] * 512}), "not a safetensors file"),
        (b"PK\x03\x04 a zipped torch checkpoint", "not a safetensors file"),
        (
            save_safetensors({"face_embedding": torch.zeros(256)}),
            "tensor 'face_embedding' has shape [256], expected [512]",
        ),
        (save_safetensors({"other": torch.zeros(512)}), "the file has no tensor 'face_embedding'"),
        (EMBEDDING[:-8], "not a valid safetensors file"),
    ],
    ids=["pickle", "zip", "wrong-shape", "wrong-name", "truncated"],
)
def test_a_file_that_is_not_what_the_check_wants_is_refused_and_not_cached(data: bytes, message: str) -> None:
    cache = TensorFileCache(1 << 20)
    with pytest.raises(TensorFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(URL, FakeContext(files={URL: data}), cache)
    assert hashlib.sha256(data).hexdigest() not in cache and cache.nbytes == 0


def test_the_header_is_checked_before_the_tensors_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []

    def record(data: bytes) -> dict[str, torch.Tensor]:
        parsed.append(data)
        return {}

    monkeypatch.setattr("models.kit.tensor_files.load_safetensors", record)

    def refuse(header: Mapping[str, Any]) -> None:
        raise ValueError("not this one")

    with pytest.raises(TensorFileError, match="not this one"):
        load(URL, FakeContext(files={URL: EMBEDDING}), TensorFileCache(1 << 20), check=refuse)
    assert parsed == []


def test_a_file_over_the_byte_cap_is_refused() -> None:
    from worker.context import FileInputError

    ctx = FakeContext(files={URL: EMBEDDING})
    with pytest.raises(FileInputError, match=f"larger than {len(EMBEDDING) - 1} bytes"):
        load(URL, ctx, TensorFileCache(1 << 20), max_bytes=len(EMBEDDING) - 1)


def test_a_context_that_returns_more_than_the_cap_is_refused_too() -> None:
    class Careless(FakeContext):
        def load_file(self, uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
            return self.files[uri]

    with pytest.raises(TensorFileError, match="larger than 100 bytes"):
        load(URL, Careless(files={URL: EMBEDDING}), TensorFileCache(1 << 20), max_bytes=100)


def test_a_file_that_fails_verify_is_not_cached() -> None:
    cache = TensorFileCache(1 << 20)

    def verify(file: TensorFile) -> None:
        raise ValueError("does not fit this model")

    with pytest.raises(ValueError, match="does not fit this model"):
        load(URL, FakeContext(files={URL: EMBEDDING}), cache, verify=verify)
    assert cache.nbytes == 0


def test_the_cache_keeps_the_most_recently_used_within_its_bytes() -> None:
    def file(tag: str, kib: int) -> TensorFile:
        return TensorFile(tag, {"w": torch.zeros(kib * 256)})

    cache = TensorFileCache(max_bytes=3 * 1024)
    for tag in "abc":
        cache.put(file(tag, 1))
    assert cache.get("a") is not None
    cache.put(file("d", 1))
    assert [tag in cache for tag in "abcd"] == [True, False, True, True]
    cache.put(file("huge", 4))
    assert "huge" not in cache and cache.nbytes == 3 * 1024


def test_one_process_cache_per_purpose() -> None:
    embeddings = process_tensor_file_cache("test-embeddings", 1024)
    assert process_tensor_file_cache("test-embeddings", 1024) is embeddings
    assert process_tensor_file_cache("test-other", 1024) is not embeddings


def test_tensors_round_trip_through_a_safetensors_output() -> None:
    base = torch.arange(24, dtype=torch.float16).reshape(4, 6)
    # A transposed view (not contiguous) and two views of one storage: both saved as copies of their own.
    output = safetensors_output(
        "embeddings", {"t": base.T, "a": base[:2], "b": base[2:]}, metadata={"model": "kiln/instantid-xl"}
    )
    assert output == NamedFile("embeddings", output.data, "safetensors", "application/octet-stream")
    loaded = load_safetensors(output.data)
    assert (
        torch.equal(loaded["t"], base.T) and torch.equal(loaded["a"], base[:2]) and torch.equal(loaded["b"], base[2:])
    )
    assert loaded["t"].dtype == torch.float16
    parsed = load(URL, FakeContext(files={URL: output.data}), TensorFileCache(1 << 20), check=lambda header: None)
    assert parsed.metadata == {"model": "kiln/instantid-xl"}
