"""Build a fake-weights folder once, safely; and the small CLIP tokenizer every fake layout saves.

A tiny (or random-full) pipeline is built from configs with random weights under a fixed seed, saved
with ``save_pretrained`` and from then on loaded with ``from_pretrained`` like real weights. Building
happens once per weights directory: into a temporary folder next to the target, renamed into place
under a file lock, so that workers starting together neither collide nor see a half-written folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import diffusers
import torch
import transformers
from filelock import FileLock
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

MARKER_NAME = "kiln-tiny.json"

# Words that get whole-word merges, so common prompts tokenize into a few tokens like with real CLIP.
_TOKENIZER_WORDS = (
    "a", "an", "the", "of", "in", "on", "and", "with", "photo", "painting", "portrait", "room",
    "house", "cat", "dog", "man", "woman", "red", "blue", "green", "light", "dark", "style",
)  # fmt: skip


def builder_fingerprint(*module_names: str) -> str:
    """A digest of the builder modules' source and the library versions that shape the saved files.

    Any edit to a builder, or an upgrade of torch/diffusers/transformers, changes it, which makes
    ``ensure_built`` rebuild instead of serving weights a different builder made.
    """
    digest = hashlib.sha256()
    for name in (__name__, *module_names):
        digest.update(Path(inspect.getfile(sys.modules[name])).read_bytes())
    for version in (torch.__version__, diffusers.__version__, transformers.__version__):
        digest.update(version.encode())
    return digest.hexdigest()[:16]


def _is_current(dest: Path, fingerprint: str) -> bool:
    try:
        marker = json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("fingerprint") == fingerprint


def ensure_built(dest: Path, fingerprint: str, build: Callable[[Path], None]) -> Path:
    """Make ``dest`` hold what ``build`` writes, built at most once per ``fingerprint``; return ``dest``.

    ``build(folder)`` must fill an empty folder. The marker is written last and the folder renamed
    into place, so ``dest`` is either absent, stale (other fingerprint) or complete.
    """
    if _is_current(dest, fingerprint):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f"{dest.name}.lock")):
        # Another process may have finished the build while this one waited for the lock.
        if _is_current(dest, fingerprint):
            return dest
        # Holding the lock, no build is running: dot-folders left here are from a killed build.
        for leftover in dest.parent.glob(f".{dest.name}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            build(staging)
            (staging / MARKER_NAME).write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
            if dest.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stale.", dir=dest.parent))
                os.replace(dest, stale / dest.name)
                shutil.rmtree(stale)
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right BPE merges that assemble ``word`` (with CLIP's ``</w>`` end-of-word suffix)."""
    merges, left = [], word[0]
    for i, char in enumerate(word[1:], start=1):
        right = char + "</w>" if i == len(word) - 1 else char
        merges.append((left, right))
        left += right
    return merges


def save_tiny_clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """Write a small CLIP BPE tokenizer (byte alphabet plus a few whole words) to ``folder``.

    Every byte and every byte at a word's end is in the vocabulary, so any prompt tokenizes
    without unknown tokens; ``model_max_length`` is 77 like real CLIP.
    """
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(char + "</w>" for char in alphabet)]
    merges: list[tuple[str, str]] = []
    for word in _TOKENIZER_WORDS:
        for merge in _word_merges(word) if len(word) > 1 else []:
            if merge not in merges:
                merges.append(merge)
                tokens.append("".join(merge))
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer
