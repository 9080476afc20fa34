"""Safetensors files in a worker: file inputs fetched, checked, parsed and cached; file outputs written.

- **Inputs** (``load_tensor_file``, in ``prepare``): an uploaded file from storage or an https URL
  through the SSRF guard (``PredictContext.load_file``), bounded in bytes and time. Its header is read
  and checked (``check``: names, dtypes, shapes) before anything is parsed, then the tensors are
  parsed by ``safetensors``: a pickle is never loaded.
- **Cache**: parsed files are kept per process and purpose (``process_tensor_file_cache``), by the
  SHA-256 of their bytes, least recently used out first within a byte budget. An uploaded file's digest
  is on its record, so a cached upload is not even read again.
- **Outputs** (``safetensors_output``): tensors saved as a ``NamedFile`` the runner stores as is.

Errors say what is wrong with the file, not which input held it: the caller names the field.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.kit.contract import NamedFile, PredictContext
from shared.inputs.safetensors_files import METADATA_KEY, read_safetensors_header

# What a file output of tensors is served as.
SAFETENSORS_CONTENT_TYPE = "application/octet-stream"

# Checks a file's header (``read_safetensors_header``) before its tensors are parsed; raises ValueError.
HeaderCheck = Callable[[Mapping[str, Any]], None]


class TensorFileError(ValueError):
    """A safetensors file that cannot be used; the message says why, for the user."""


@dataclass(frozen=True)
class TensorFile:
    """A checked safetensors file: its tensors (on the CPU), its metadata, and the SHA-256 of its bytes."""

    sha256: str
    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def state_dict(self) -> Mapping[str, torch.Tensor]:
        """The tensors, under the name torch and diffusers give a mapping of them."""
        return self.tensors

    @property
    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors.values())


class TensorFileCache:
    """Checked files by content hash, least recently used out first beyond ``max_bytes``; thread-safe
    (the prefetch thread and the worker's thread both prepare jobs)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, TensorFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> TensorFile | None:
        with self._lock:
            file = self._entries.get(sha256)
            if file is not None:
                self._entries.move_to_end(sha256)
            return file

    def put(self, file: TensorFile) -> None:
        """Keep ``file`` (a file larger than the whole cache is not kept)."""
        if file.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries[file.sha256] = file
            self._entries.move_to_end(file.sha256)
            while self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(file.nbytes for file in self._entries.values())

    def __contains__(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._entries


_caches: dict[tuple[str, int], TensorFileCache] = {}
_caches_lock = threading.Lock()


def process_tensor_file_cache(name: str, max_bytes: int) -> TensorFileCache:
    """The process's cache for one purpose (``"lora"``, ``"embeddings"``): every predictor that asks by
    the same name and budget shares it."""
    with _caches_lock:
        return _caches.setdefault((name, max_bytes), TensorFileCache(max_bytes))


def parse_tensor_file(data: bytes, sha256: str, check: HeaderCheck) -> TensorFile:
    """The tensors of the safetensors file ``data`` (whose SHA-256 is ``sha256``), once its header passed
    ``check``; never unpickles anything."""
    try:
        header = read_safetensors_header([data])
        check(header)
        tensors = load_safetensors(data)
    except SafetensorError as exc:
        raise TensorFileError(f"not a valid safetensors file: {exc}") from None
    except ValueError as exc:  # the header's reader, the check, or safetensors on a malformed file
        raise TensorFileError(str(exc)) from None
    metadata = header.get(METADATA_KEY) or {}
    return TensorFile(sha256, tensors, {str(key): str(value) for key, value in metadata.items()})


def load_tensor_file(
    uri: str,
    ctx: PredictContext,
    cache: TensorFileCache,
    *,
    max_bytes: int,
    timeout_s: float,
    check: HeaderCheck,
    verify: Callable[[TensorFile], None] | None = None,
    name: str = "file",
) -> TensorFile:
    """The checked file behind ``uri``: from ``cache`` when its content is known there (an upload's
    digest, else the SHA-256 of the fetched bytes), else fetched (at most ``max_bytes`` within
    ``timeout_s``), its header checked (``check``), parsed, checked further (``verify``, e.g. against
    the model; optional) and cached. ``name`` is what the log lines call it (the input's field).

    Refusals are ``TensorFileError``; a file that cannot be fetched is ``ctx.load_file``'s error.
    """
    known = ctx.file_digest(uri)
    if known is not None and (cached := cache.get(known)) is not None:
        ctx.log(f"Using cached {name}")
        return cached
    data = ctx.load_file(uri, max_bytes=max_bytes, timeout_s=timeout_s)
    if len(data) > max_bytes:
        raise TensorFileError(f"the file is larger than {max_bytes} bytes")
    sha256 = hashlib.sha256(data).hexdigest()
    if (cached := cache.get(sha256)) is not None:
        ctx.log(f"Using cached {name}")
        return cached
    file = parse_tensor_file(data, sha256, check)
    del data
    if verify is not None:
        verify(file)
    cache.put(file)
    ctx.log(f"Loaded {name} ({file.nbytes / 2**20:.1f} MiB, {len(file.tensors)} tensors)")
    return file


def safetensors_output(
    name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> NamedFile:
    """``tensors`` (and string ``metadata``) as a ``<name>.safetensors`` output. Each tensor is saved from
    a contiguous CPU copy of its own (safetensors refuses tensors that share memory, e.g. two views)."""
    on_cpu = {
        key: tensor.detach().cpu().clone(memory_format=torch.contiguous_format) for key, tensor in tensors.items()
    }
    data = save_safetensors(on_cpu, metadata=dict(metadata) if metadata else None)
    return NamedFile(name, data, "safetensors", SAFETENSORS_CONTENT_TYPE)
