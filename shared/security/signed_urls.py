"""Signed, expiring URLs: links that work without the Authorization header, for a while.

One signer serves every kind of URL Kiln hands out as a capability (output files today; the
stream URL and stored inputs can use the same). A signed URL is the path plus ``expires`` (unix
seconds) and ``sig``, an HMAC-SHA256 of both under the server's URL-signing secret, so neither the
path nor the expiry can be changed without breaking the signature::

    signer = UrlSigner.from_settings(settings, redis)            # or services.url_signer in the API
    url = signer.url(base_url, "/v1/predictions/<id>/stream")    # fresh: expires ttl_s from now
    url = signer.url(base_url, path, not_after=deleted_at)       # never outlives the data behind it

    # In the route that serves the path (the path as the route sees it, decoded):
    verdict = signer.check(request.url.path, expires=request.query_params.get("expires"),
                           sig=request.query_params.get("sig"))
    # Verdict.VALID serves; Verdict.EXPIRED deserves a 403 saying so (the signature was ours);
    # Verdict.INVALID and Verdict.MISSING are no capability at all (fall back to the token).

Render URLs when answering, never store them: each answer then carries a fresh one. Expiry times
are rounded down to a tenth of the lifetime, so URLs rendered close together are identical (caches
and clients comparing outputs see no churn) and each lives between 90 % and 100 % of ``ttl_s``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from enum import Enum

from redis import Redis

from shared.security.server_secrets import url_signing_secret
from shared.settings import Settings

# An expiry is unix seconds: 10 digits until the year 2286; longer ones are refused unread.
MAX_EXPIRES_DIGITS = 12


class Verdict(Enum):
    VALID = "valid"
    # The signature is ours, but the URL is past its expiry.
    EXPIRED = "expired"
    # A signature that is not ours for this path and expiry (forged, altered, malformed).
    INVALID = "invalid"
    # No signature given.
    MISSING = "missing"


def _signature(secret: str, path: str, expires: int) -> str:
    digest = hmac.new(secret.encode(), f"{expires}:{path}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


@dataclass(frozen=True)
class UrlSigner:
    """Signs paths with an expiry and checks them. ``ttl_s`` is how long a fresh URL lives."""

    secret: str
    ttl_s: int

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis, ttl_s: int | None = None) -> UrlSigner:
        """The process's signer: the configured or shared secret (``KILN_URL_SIGNING_SECRET``), URLs
        living ``KILN_OUTPUT_URL_TTL_S`` (or ``ttl_s``), never longer than ``KILN_RETENTION_S``."""
        lifetime = settings.output_url_ttl_s if ttl_s is None else ttl_s
        return cls(url_signing_secret(settings, redis), min(lifetime, settings.retention_s))

    def expiry(self, *, now: float | None = None, not_after: float | None = None) -> int:
        """Unix seconds a URL signed now expires at: ``ttl_s`` ahead (rounded down to a tenth of
        it), and never after ``not_after``."""
        now = time.time() if now is None else now
        step = max(1, self.ttl_s // 10)
        expires = int((now + self.ttl_s) // step * step)
        return expires if not_after is None else min(expires, int(not_after))

    def query(self, path: str, *, now: float | None = None, not_after: float | None = None) -> str:
        """``expires=...&sig=...`` for ``path``."""
        expires = self.expiry(now=now, not_after=not_after)
        return f"expires={expires}&sig={_signature(self.secret, path, expires)}"

    def url(self, base_url: str, path: str, *, now: float | None = None, not_after: float | None = None) -> str:
        """The absolute signed URL of ``path`` (which must not have a query of its own)."""
        return f"{base_url}{path}?{self.query(path, now=now, not_after=not_after)}"

    def check(self, path: str, *, expires: str | None, sig: str | None, now: float | None = None) -> Verdict:
        """Whether ``sig`` and ``expires`` (query values as received, any text) grant ``path`` now."""
        if sig is None and expires is None:
            return Verdict.MISSING
        if sig is None or expires is None or not expires.isascii() or not expires.isdigit() or not sig.isascii():
            return Verdict.INVALID
        if len(expires) > MAX_EXPIRES_DIGITS:  # no URL was signed so far ahead (and int() refuses 4,300 digits)
            return Verdict.INVALID
        expected = _signature(self.secret, path, int(expires))
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            return Verdict.INVALID
        return Verdict.VALID if int(expires) > (time.time() if now is None else now) else Verdict.EXPIRED
