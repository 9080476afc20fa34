"""Text that cannot break the server: invalid Unicode anywhere (JSON body, query string,
path, header, multipart) is a 4xx, never a 5xx; a batch item with bad text fails alone; no 4xx
leaves an object behind; prompts are bounded (``KILN_MAX_PROMPT_CHARS``).

Requests go to a real API process (uvicorn) byte for byte, as a hostile client would send them."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from shared.predictions.record import new_id
from tests.support import PROBLEM_JSON, assert_problem, data_uri, png_bytes, wait_for_status
from tests.support.predictions import TERMINAL, depth2img_input
from tests.support.raw_http import RawResponse, raw_request
from tests.support.tenants import client_for, new_token

pytestmark = pytest.mark.integration
LONE = "\\ud800"  # a lone surrogate, as JSON writes it
GOOD_INPUT = depth2img_input(width=64, height=64)
GOOD_JSON = json.dumps({"version": "kiln/sd2-depth2img", "input": GOOD_INPUT})


def with_input(**fields: str) -> bytes:
    """A create body whose input fields are raw JSON text (so escapes reach the server as written)."""
    kept = json.dumps({name: value for name, value in GOOD_INPUT.items() if name not in fields})[1:-1]
    raw = ", ".join(f'"{name}": {value}' for name, value in fields.items())
    return f'{{"version": "kiln/sd2-depth2img", "input": {{{raw}, {kept}}}}}'.encode()


JSON_BODIES: list[tuple[str, str, bytes]] = [
    ("prompt", "/v1/predictions", with_input(prompt=f'"a {LONE} b"')),
    ("negative_prompt", "/v1/predictions", with_input(negative_prompt='"\\udfff"')),
    ("input_image host", "/v1/predictions", with_input(input_image=f'"http://{LONE}.example/x.png"')),
    ("input_image data", "/v1/predictions", with_input(input_image=f'"data:image/png;base64,{LONE}"')),
    ("depth_image path", "/v1/predictions", with_input(depth_image=f'"https://example.com/{LONE}.png"')),
    ("input key", "/v1/predictions", with_input(**{LONE: "1"})),
    ("nested", "/v1/predictions", with_input(extra=f'[{{"a": ["{LONE}"]}}]')),
    ("version", "/v1/predictions", f'{{"version": "{LONE}", "input": {{}}}}'.encode()),
    ("webhook", "/v1/predictions", GOOD_JSON[:-1].encode() + f', "webhook": "http://{LONE}.example/h"}}'.encode()),
    ("events filter", "/v1/predictions", GOOD_JSON[:-1].encode() + f', "webhook_events_filter": ["{LONE}"]}}'.encode()),
    ("ignored key", "/v1/predictions", GOOD_JSON[:-1].encode() + f', "{LONE}stream": true}}'.encode()),
    ("model route", "/v1/models/kiln/sd2-depth2img/predictions", f'{{"input": {{"prompt": "{LONE}"}}}}'.encode()),
    ("batch key", "/v1/predictions/batch", f'{{"predictions": [], "{LONE}": 1}}'.encode()),
    ("raw invalid UTF-8", "/v1/predictions", GOOD_JSON.replace("a kiln", "a \xff kiln").encode("latin-1")),
    ("raw surrogate bytes", "/v1/predictions", GOOD_JSON.encode().replace(b"a kiln", b"a \xed\xa0\x80 kiln")),
]

PATHS_AND_QUERIES: list[bytes] = [
    b"/v1/predictions?cursor=%C3%A9",  # non-ASCII cursor (the fuzzer's finding)
    b"/v1/predictions?cursor=\xc3\xa9\xc3\xa9",
    b"/v1/predictions?cursor=%ED%A0%80",
    b"/v1/predictions?cursor=%FF%FE",
    b"/v1/predictions/%ED%A0%80",
    b"/v1/predictions/\xff\xfe",
    b"/v1/predictions/%ED%A0%80/cancel",
    b"/v1/predictions/%ED%A0%80/stream",
    b"/v1/predictions/" + new_id().encode() + b"/output/out-0.png?sig=%C3%A9&expires=1",  # non-ASCII sig
    b"/v1/predictions/" + new_id().encode() + b"/output/out-0.png?sig=\xc3\xa9&expires=\xf0\x9f\x94\xa5",
    b"/v1/predictions/" + new_id().encode() + b"/output/%ED%A0%80.png?sig=x&expires=%EF%BC%91",
    b"/v1/files/%ED%A0%80",
    b"/v1/files/%FF/download",
    b"/v1/models/%ED%A0%80/x",
    b"/v1/models/kiln/%FF/versions",
    b"/v1/models/kiln/sd2-depth2img/versions/%ED%A0%80",
]
# Pages the playground serves for any id (its script asks the API, which says "not found"): never a 5xx.
HARMLESS: list[bytes] = [b"/playground/predictions/%ED%A0%80", b"/playground/predictions/\xff"]


def assert_a_client_error(response: RawResponse, what: str) -> None:
    assert 400 <= response.status < 500, f"{what}: {response.status} {response.body[:300]!r}"
    if response.headers.get("content-type") == PROBLEM_JSON:
        problem = json.loads(response.body)
        assert problem["status"] == response.status and problem["detail"], what


@pytest.fixture
def tenant(stack):
    """A fresh token, so what it stored (or did not) is its alone."""
    _, token = new_token(stack.redis_url, "text")
    return token


def stored_keys(stack) -> set[str]:
    bucket = stack.env["KILN_S3_BUCKET"]
    found, paginator = set(), stack.s3.client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        found |= {item["Key"] for item in page.get("Contents", [])}
    return found


def test_invalid_unicode_anywhere_is_a_client_error_and_stores_nothing(stack, tenant):
    address = urlsplit(stack.base_url)
    host, port = address.hostname, address.port
    auth = {"Authorization": b"Bearer " + tenant.encode()}
    json_headers = auth | {"Content-Type": b"application/json"}
    before = stored_keys(stack)
    answers: list[tuple[str, RawResponse]] = []
    for what, path, body in JSON_BODIES:
        answers.append((what, raw_request(host, port, "POST", path.encode(), json_headers, body)))
    for target in PATHS_AND_QUERIES:
        answers.append((repr(target), raw_request(host, port, "GET", target, auth)))
    headers_cases = {
        "authorization": {"Authorization": b"Bearer \xff\xfe\xed\xa0\x80"},
        "idempotency key": json_headers | {"Idempotency-Key": b"\xed\xa0\x80\xff"},
        "prefer": json_headers | {"Prefer": b"wait=\xd9\xa3\xff"},
        "content type": auth | {"Content-Type": b"application/json; charset=\xff"},
    }
    bad_body = with_input(prompt=f'"{LONE}"')
    for what, headers in headers_cases.items():
        answers.append((what, raw_request(host, port, "POST", b"/v1/predictions", headers, bad_body)))
    answers += upload_answers(host, port, auth)

    for what, response in answers:
        assert_a_client_error(response, what)
    harmless = [raw_request(host, port, "GET", target, auth) for target in HARMLESS]
    assert all(response.status < 500 for response in harmless)
    server_errors = sum(response.status >= 500 for _, response in answers)
    total = len(answers) + len(harmless)
    print(f"\ninvalid-Unicode corpus: {total} requests to a real API process, {server_errors} x 5xx")
    assert server_errors == 0
    named = {what: json.loads(r.body)["detail"] for what, r in answers[:13]}
    assert named["prompt"].startswith("input.prompt: not valid Unicode")
    assert named["input_image host"].startswith("input.input_image: not valid Unicode")
    assert named["nested"].startswith("input.extra.0.a.0: not valid Unicode")
    assert named["webhook"].startswith("webhook: not valid Unicode")
    with client_for(stack.base_url, tenant) as client:
        assert client.get("/v1/predictions").json()["results"] == []
        assert client.get("/v1/files").json()["results"] == []
        # The server still answers on a kept-alive connection after all of that.
        assert [client.get("/v1/queue").status_code for _ in range(3)] == [200, 200, 200]
    assert stored_keys(stack) - before == set(), "a refused request left an object in S3"


def multipart(fields: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    boundary = b"kilnboundary" + new_id().encode()
    parts = [b"--" + boundary + b"\r\n" + disposition + b"\r\n\r\n" + value + b"\r\n" for disposition, value in fields]
    return b"".join(parts) + b"--" + boundary + b"--\r\n", b"multipart/form-data; boundary=" + boundary


def upload_answers(host: str, port: int, auth: dict[str, bytes]) -> list[tuple[str, RawResponse]]:
    image = png_bytes(16, 16)
    content = (b'Content-Disposition: form-data; name="content"; filename="a.png"\r\nContent-Type: image/png', image)
    cases = {
        "metadata escape": [content, (b'Content-Disposition: form-data; name="metadata"', b'{"k": "\\ud800"}')],
        "metadata key": [content, (b'Content-Disposition: form-data; name="metadata"', b'{"\\udfff": 1}')],
        "filename star": [
            (b"Content-Disposition: form-data; name=\"content\"; filename*=UTF-8''%ED%A0%80.png", image),
            (b'Content-Disposition: form-data; name="metadata"', b"[]"),
        ],
    }
    answers = []
    for what, fields in cases.items():
        body, content_type = multipart(fields)
        answers.append(
            (what, raw_request(host, port, "POST", b"/v1/files", auth | {"Content-Type": content_type}, body))
        )
    return answers


def test_undecodable_bytes_in_a_form_are_never_a_server_error(stack, tenant):
    """Form fields and file names arrive decoded (Latin-1 where they are not UTF-8): stored as text."""
    address = urlsplit(stack.base_url)
    auth = {"Authorization": b"Bearer " + tenant.encode()}
    image = png_bytes(16, 16)
    for disposition, metadata in (
        (b'form-data; name="content"; filename="a.png"', b'{"k": "\xff\xed\xa0\x80"}'),
        (b'form-data; name="content"; filename="\xed\xa0\x80\xff.png"', b"{}"),
    ):
        body, content_type = multipart(
            [
                (b"Content-Disposition: " + disposition + b"\r\nContent-Type: image/png", image),
                (b'Content-Disposition: form-data; name="metadata"', metadata),
            ]
        )
        response = raw_request(
            address.hostname, address.port, "POST", b"/v1/files", auth | {"Content-Type": content_type}, body
        )
        assert response.status in {201, 422}, response.body[:300]
        if response.status == 201:
            with client_for(stack.base_url, tenant) as client:
                record = json.loads(response.body)
                assert client.get(f"/v1/files/{record['id']}").json() == record


def test_a_batch_item_with_bad_text_fails_alone(stack, tenant):
    bad = GOOD_JSON.replace('"a kiln"', f'"a {LONE}"')
    body = '{"predictions": [' + ", ".join([GOOD_JSON, bad, GOOD_JSON]) + "]}"
    with client_for(stack.base_url, tenant) as client:
        response = client.post(
            "/v1/predictions/batch", content=body.encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text
        first, refused, third = response.json()["results"]
        assert refused["status"] == 422 and refused["detail"].startswith("input.prompt: not valid Unicode"), refused
        for created in (first, third):
            assert wait_for_status(client, created["id"], TERMINAL)["status"] == "succeeded"
        assert {p["id"] for p in client.get("/v1/predictions").json()["results"]} == {first["id"], third["id"]}


def test_prompts_are_bounded(stack, tenant):
    with client_for(stack.base_url, tenant) as client:
        for field in ("prompt", "negative_prompt"):
            too_long = {"version": "kiln/sd2-depth2img", "input": GOOD_INPUT | {field: "x" * 10_001}}
            assert_problem(
                client.post("/v1/predictions", json=too_long), 422, f"input.{field}", "KILN_MAX_PROMPT_CHARS"
            )
            xl = {"input": {"prompt": "ok", field: "y" * 10_001, "ip_image": data_uri(png_bytes(64, 64))}}
            assert_problem(
                client.post("/v1/models/kiln/ip-adapter-depth-xl/predictions", json=xl), 422, f"input.{field}"
            )
        at_limit = {"version": "kiln/sd2-depth2img", "input": GOOD_INPUT | {"prompt": "z" * 10_000}}
        created = client.post("/v1/predictions", json=at_limit)
        assert created.status_code == 201, created.text
        assert len(created.json()["input"]["prompt"]) == 10_000
        wait_for_status(client, created.json()["id"], TERMINAL)
