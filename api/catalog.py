"""Kiln's models as Replicate's catalog endpoints show them: the one collection (``kiln``) and search
over model names and descriptions. Light (no torch): the API renders from it."""

from __future__ import annotations

import re
from typing import Any

from models.registry import MODELS
from shared.model_spec import ModelSpec

COLLECTION_SLUG = "kiln"
COLLECTION = {
    "slug": COLLECTION_SLUG,
    "name": "Kiln",
    "description": "Every model this Kiln serves: controllable image generation (depth, pose, IP-Adapter).",
}


def search(query: str) -> list[tuple[ModelSpec, float]]:
    """The models whose name, owner or description hold every word of ``query`` (case-insensitive),
    best first: a score counting where the words were found (name counts more)."""
    words = query_words(query)
    found = []
    for spec in MODELS.values():
        name, description = spec.ref.lower(), spec.description.lower()
        if words and all(word in name or word in description for word in words):
            score = sum(2.0 if word in name else 1.0 for word in words) / (2 * len(words))
            found.append((spec, score))
    return sorted(found, key=lambda pair: (-pair[1], pair[0].ref))


def query_words(query: str) -> list[str]:
    return [word for word in re.split(r"\W+", query.lower()) if word]


def collection_summary() -> dict[str, Any]:
    return dict(COLLECTION)
