"""A bounded schemathesis run against the API's own ``/openapi.json``: whatever it
sends, to every operation, no server error, and every answer as the document describes it (status
code, content type, headers, body schema).

The API under test is a real uvicorn process on the stack's Redis server but another database and
with rate limits out of the way; no worker consumes that database, so what it manages to create is
stored and enqueued there and never run. ``Prefer: wait`` is left out (nothing there ever finishes).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from redis import Redis
from schemathesis import checks

from deploy.devstack.servers import free_port
from tests.support import start_process, stop_process, wait_until
from tests.support.stack import uvicorn_argv

pytestmark = pytest.mark.integration
FUZZ_DB = 6
TOKEN = "schemathesis-" + secrets.token_hex(8)
# Examples per operation (at most: some operations run out of distinct inputs sooner): about a
# thousand requests over the forty operations, ten seconds or so. Nothing is kept between runs
# (no example database), so each run explores afresh.
EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed_api(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base, _, _ = stack.redis_url.rpartition("/")
    redis_url = f"{base}/{FUZZ_DB}"
    port = free_port()
    env = stack.env | {
        "KILN_REDIS_URL": redis_url,
        "KILN_API_TOKEN": f"fuzz={TOKEN}",
        "KILN_RATE_LIMIT_PER_S": "100000",
        "KILN_RATE_LIMIT_BURST": "100000",
        "KILN_IMAGE_FETCH_TIMEOUT_S": "1",
        "KILN_WEBHOOK_ALLOW_PRIVATE": "false",
    }
    log = Path(tmp_path_factory.mktemp("schemathesis")) / "api.log"
    process = start_process(uvicorn_argv(port), env, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or answers(base_url), 60, what="the fuzzed API")
        assert process.poll() is None, log.read_text()[-3000:]
        yield base_url
    finally:
        stop_process(process)
        tracebacks = log.read_text().count("Traceback")
        print(f"\nschemathesis: {tracebacks} tracebacks in the fuzzed API's log")
        with Redis.from_url(redis_url) as fuzz_redis:
            fuzz_redis.flushdb()


def answers(base_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# The response-conformance checks every answer must pass.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


def test_every_answer_conforms_to_the_document(fuzzed_api: str) -> None:
    # The schema as the running API serves it; each operation fuzzed by its own Hypothesis run.
    schema = schemathesis.openapi.from_url(f"{fuzzed_api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [operation.label for operation in operations]
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            case.headers = {name: value for name, value in (case.headers or {}).items() if name.lower() != "prefer"}
            response = case.call(base_url=fuzzed_api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            calls.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
            )
            case.validate_response(response, checks=CHECKS)
            if response.status_code >= 400 and response.headers.get("content-type") == "application/problem+json":
                problem = json.loads(response.text)
                assert problem["status"] == response.status_code and problem["detail"]

        no_server_error()
    print(
        f"\nschemathesis: {len(calls)} requests over {len(operations)} operations, {sum(c >= 500 for c in calls)} x 5xx"
    )


def test_a_method_a_path_does_not_answer_is_a_405_allowing_every_documented_one(fuzzed_api: str) -> None:
    import httpx

    document = httpx.get(f"{fuzzed_api}/openapi.json", timeout=30).json()
    for path, operations in document["paths"].items():
        documented = {method.upper() for method in operations}
        method = next(m for m in ("PUT", "PATCH", "DELETE", "POST", "GET") if m not in documented)
        url = fuzzed_api + path.replace("{", "").replace("}", "")
        response = httpx.request(method, url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert response.status_code == 405, (method, path, response.status_code)
        assert response.headers["content-type"] == "application/problem+json"
        assert documented <= {m.strip() for m in response.headers["allow"].split(",")}, (path, response.headers)
