"""Text that is not valid Unicode is found, wherever it sits, and problems that quote it stay sendable."""

from __future__ import annotations

import json

from api.errors import problem_body
from api.intake.text import find_invalid_text, printable
from shared.predictions.client_json import refresh_output_urls
from shared.security.signed_urls import UrlSigner, Verdict


def test_lone_surrogates_are_found_in_values_and_keys_with_their_path():
    assert find_invalid_text({"prompt": "fine é 😀", "list": [1, "ok"]}) is None
    found = find_invalid_text({"input": {"refs": ["ok", {"url": "x\ud800"}]}})
    assert found is not None and found.field() == "input.refs.1.url" and "U+D800" in found.problem
    key = find_invalid_text({"input": {"\udfff": 1}})
    assert key is not None and key.field("body") == "body.input.\\udfff" and key.problem.startswith("key")


def test_problem_documents_quoting_bad_text_can_still_be_encoded():
    body = problem_body(422, "version: unknown model '\ud800'", errors=[{"field": "a\udc00"}])
    encoded = json.dumps(body, ensure_ascii=False).encode()
    assert b"\\ud800" in encoded and printable("ok") == "ok"


def test_a_webhook_body_gets_fresh_output_urls_signed_until_the_files_go():
    signer = UrlSigner("s", ttl_s=3600)
    stale = signer.url("https://kiln.example", "/v1/predictions/p/output/out-0.png", now=0)
    body = json.dumps({"id": "p", "output": [stale], "completed_at": "2026-11-26T10:00:00.000000Z", "logs": ""})
    fresh_url = json.loads(refresh_output_urls(body, signer, retention_s=10**9))["output"][0]
    assert fresh_url != stale and fresh_url.startswith("https://kiln.example/v1/predictions/p/output/out-0.png?")
    query = dict(part.split("=", 1) for part in fresh_url.split("?")[1].split("&"))
    assert signer.check("/v1/predictions/p/output/out-0.png", **query) is Verdict.VALID
    assert refresh_output_urls('{"output": null}', signer, 3600) == '{"output": null}'
