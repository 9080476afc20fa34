"""Kiln's models and the caller's account as Replicate's catalog endpoints show them: the models'
pages, the one collection (``kiln``), search over model names and descriptions, the account a token
is. Light (no torch): the API renders from it."""

from __future__ import annotations

import re
from typing import Any

from api.auth import Caller
from api.openapi.versions import render_model
from api.services import Services
from models.registry import served_models
from shared.db import keys
from shared.model_spec import ModelSpec
from shared.settings import Settings

COLLECTION_SLUG = "kiln"
COLLECTION = {
    "slug": COLLECTION_SLUG,
    "name": "Kiln",
    "description": "Every model this Kiln serves: controllable image generation (depth, pose, IP-Adapter).",
}


def search(query: str, settings: Settings) -> list[tuple[ModelSpec, float]]:
    """The served models whose name, owner or description hold every word of ``query`` (case-insensitive),
    best first: a score counting where the words were found (name counts more)."""
    words = query_words(query)
    found = []
    for spec in served_models(settings).values():
        name, description = spec.ref.lower(), spec.description.lower()
        if words and all(word in name or word in description for word in words):
            score = sum(2.0 if word in name else 1.0 for word in words) / (2 * len(words))
            found.append((spec, score))
    return sorted(found, key=lambda pair: (-pair[1], pair[0].ref))


def query_words(query: str) -> list[str]:
    return [word for word in re.split(r"\W+", query.lower()) if word]


def collection_summary() -> dict[str, Any]:
    return dict(COLLECTION)


def _run_counts(services: Services, specs: list[ModelSpec]) -> list[int]:
    """How many predictions each of ``specs`` has run (``run_count`` of its model page)."""
    counts = services.redis.mget([keys.model_run_count(spec.ref) for spec in specs])
    return [int(count or 0) for count in counts]


def render_models(services: Services, base: str, specs: list[ModelSpec] | None = None) -> list[dict[str, Any]]:
    """``specs`` (every model by default) as ``GET /v1/models/{owner}/{name}`` renders each."""
    specs = list(served_models(services.settings).values()) if specs is None else specs
    counts = _run_counts(services, specs) if specs else []
    return [render_model(spec, services.settings, base, count) for spec, count in zip(specs, counts, strict=True)]


def account_of(caller: Caller) -> dict[str, Any]:
    """Each token is its own account, named after the token (``kiln tokens``, ``KILN_API_TOKEN``)."""
    return {"type": "user", "username": caller.name, "name": caller.name, "github_url": None}
