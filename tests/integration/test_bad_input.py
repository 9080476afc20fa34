"""Bad input on create, table-driven: every case is a 4xx problem+json whose ``detail`` says what is
wrong (field and limit), never a 5xx, and no prediction is stored.

Cases that need settings the shared stack does not have (a small body cap, a short fetch timeout,
an address the SSRF guard must treat as public) run against an in-process app on the stack's Redis
and S3 (``app_for``), with the same tenant, so the same "nothing stored" check applies.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import quote

import pytest

from deploy.devstack.servers import free_port
from tests.support import assert_problem, data_uri, image_bytes, png_claiming_size
from tests.support.image_servers import ImageServer, silent_listener
from tests.support.predictions import app_for, depth2img_input
from tests.support.stack import TOKEN_A

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN_A}"}
VERSION = "kiln/sd2-depth2img"
DEFAULT_MAX_PIXELS = 40_000_000
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def with_input(**overrides) -> dict:
    """Keyword arguments for ``client.post``: a valid body whose input has ``overrides``."""
    return {"json": {"version": VERSION, "input": depth2img_input(width=64, height=64) | overrides}}


def with_body(**fields) -> dict:
    """A valid body with top-level ``fields`` replaced (``None`` removes one)."""
    body = {"version": VERSION, "input": depth2img_input(width=64, height=64)} | fields
    return {"json": {key: value for key, value in body.items() if value is not None}}


def raw(content: bytes | str, content_type: str = "application/json") -> dict:
    return {"content": content, "headers": {"content-type": content_type}}


def raw_input_json(fragment: str) -> dict:
    """A body whose input carries ``fragment`` verbatim, for tokens Python's JSON accepts (NaN, 1e400)."""
    valid = json.dumps(depth2img_input(width=64, height=64))
    return raw(f'{{"version": "{VERSION}", "input": {valid[:-1]}, {fragment}}}}}')


# (request keyword arguments, expected status, fragments the problem's detail must contain)
CASES = [
    # Malformed bodies.
    pytest.param(raw(b'{"version": "kiln/sd2-depth2img", "input": {'), 422, ["JSON"], id="truncated-json"),
    pytest.param(raw(b"\xff\xfe{}"), 422, ["JSON"], id="json-not-utf8"),
    pytest.param(raw(b'{"version": "kiln/sd2-depth2img" "input": {}}'), 422, ["JSON"], id="json-missing-comma"),
    pytest.param(raw(b"[1, 2, 3]"), 422, [], id="json-array-body"),
    pytest.param(raw(b'"kiln/sd2-depth2img"'), 422, [], id="json-string-body"),
    pytest.param(
        raw(b"version=kiln/sd2-depth2img", "application/x-www-form-urlencoded"), 422, [], id="form-encoded-body"
    ),
    # Wrong types.
    pytest.param(with_input(num_outputs="three"), 422, ["input.num_outputs", "integer"], id="num-outputs-string"),
    pytest.param(with_input(guidance_scale=[7.5]), 422, ["input.guidance_scale"], id="guidance-scale-list"),
    pytest.param(with_input(prompt={"text": "a kiln"}), 422, ["input.prompt"], id="prompt-object"),
    pytest.param(with_input(seed=1.5), 422, ["input.seed"], id="seed-fraction"),
    pytest.param(with_input(scheduler=3), 422, ["input.scheduler"], id="scheduler-number"),
    pytest.param(with_input(input_image=12345), 422, ["input.input_image"], id="input-image-number"),
    pytest.param(with_body(input="a kiln"), 422, ["input"], id="input-not-an-object"),
    pytest.param(with_body(webhook_events_filter="completed"), 422, ["webhook_events_filter"], id="filter-string"),
    pytest.param(with_body(webhook_events_filter=["finished"]), 422, ["webhook_events_filter"], id="filter-unknown"),
    # Out-of-range numbers name the field and the limit.
    pytest.param(with_input(num_outputs=0), 422, ["input.num_outputs", "1"], id="num-outputs-0"),
    pytest.param(with_input(num_outputs=9), 422, ["input.num_outputs", "8"], id="num-outputs-9"),
    pytest.param(with_input(num_inference_steps=0), 422, ["input.num_inference_steps", "1"], id="steps-0"),
    pytest.param(with_input(num_inference_steps=501), 422, ["input.num_inference_steps", "500"], id="steps-501"),
    pytest.param(with_input(num_inference_steps=10**30), 422, ["input.num_inference_steps", "500"], id="steps-huge"),
    pytest.param(with_input(guidance_scale=0.5), 422, ["input.guidance_scale", "1"], id="guidance-low"),
    pytest.param(with_input(guidance_scale=20.5), 422, ["input.guidance_scale", "20"], id="guidance-high"),
    pytest.param(with_input(prompt_strength=-0.1), 422, ["input.prompt_strength", "0"], id="strength-negative"),
    pytest.param(with_input(prompt_strength=1.5), 422, ["input.prompt_strength", "1"], id="strength-high"),
    pytest.param(with_input(seed=-1), 422, ["input.seed", "0"], id="seed-negative"),
    pytest.param(with_input(seed=2**32), 422, ["input.seed", "4294967295"], id="seed-too-big"),
    pytest.param(with_input(scheduler="EULER"), 422, ["input.scheduler", "DDIM"], id="scheduler-unknown"),
    pytest.param(raw_input_json('"guidance_scale": NaN'), 422, ["input.guidance_scale"], id="guidance-nan"),
    pytest.param(raw_input_json('"prompt_strength": NaN'), 422, ["input.prompt_strength"], id="strength-nan"),
    pytest.param(raw_input_json('"num_inference_steps": 1e400'), 422, ["input.num_inference_steps"], id="steps-inf"),
    pytest.param(raw_input_json('"guidance_scale": -Infinity'), 422, ["input.guidance_scale"], id="guidance-minus-inf"),
    # Unknown fields, models and versions.
    pytest.param(with_input(num_inference_step=3), 422, ["input.num_inference_step", "Extra inputs"], id="typo-field"),
    pytest.param(with_body(version="kiln/nope"), 422, ["version", "kiln/nope"], id="unknown-model"),
    pytest.param(with_body(version="0" * 64), 422, ["version", "0" * 64], id="unknown-version-id"),
    pytest.param(with_body(version=f"{VERSION}:{'0' * 64}"), 422, ["version", "0" * 64], id="unknown-versioned-ref"),
    pytest.param(with_body(version=""), 422, ["version"], id="empty-version"),
    pytest.param(with_body(version=None), 422, ["version"], id="missing-version"),
    pytest.param(with_body(input={"prompt": "a kiln"}), 422, ["input.input_image"], id="missing-input-image"),
    # Data URIs and image bytes.
    pytest.param(
        with_input(input_image="data:image/png;base64,@@not*base64@@"),
        422,
        ["input.input_image", "base64"],
        id="bad-base64",
    ),
    pytest.param(
        # Missing padding is fine (added back); a length no padding can make whole is not.
        with_input(input_image="data:image/png;base64,iVBORw0KGgoAB"),
        422,
        ["input.input_image", "base64"],
        id="base64-bad-padding",
    ),
    pytest.param(
        with_input(input_image="data:image/png;base64"),
        422,
        ["input.input_image", "malformed data URI"],
        id="data-uri-without-comma",
    ),
    pytest.param(with_input(input_image="data:;;;,"), 422, ["input.input_image"], id="data-uri-junk"),
    pytest.param(
        with_input(input_image=data_uri(b"this is not an image")),
        422,
        ["input.input_image", "not a readable image"],
        id="not-an-image",
    ),
    pytest.param(
        with_input(input_image="data:image/png;base64,"),
        422,
        ["input.input_image", "not a readable image"],
        id="empty-image",
    ),
    pytest.param(
        with_input(input_image="data:image/png," + quote(b"GIF89a-but-not-really")),
        422,
        ["input.input_image", "not a readable image"],
        id="percent-encoded-junk",
    ),
    pytest.param(
        with_input(input_image=data_uri(image_bytes("TIFF"), "image/tiff")),
        422,
        ["input.input_image", "is not one of"],
        id="tiff",
    ),
    pytest.param(
        with_input(input_image=data_uri(image_bytes("ICO"), "image/x-icon")),
        422,
        ["input.input_image", "is not one of"],
        id="ico",
    ),
    # Pillow cannot open a PDF at all, so it is answered like any unreadable bytes.
    pytest.param(
        with_input(input_image=data_uri(PDF, "application/pdf")),
        422,
        ["input.input_image", "not a readable image"],
        id="pdf",
    ),
    pytest.param(
        with_input(input_image=data_uri(png_claiming_size(100_000, 100_000))),
        422,
        ["input.input_image", f"more than {DEFAULT_MAX_PIXELS} pixels"],
        id="bomb-100000x100000",
    ),
    pytest.param(
        with_input(input_image=data_uri(png_claiming_size(8_000, 8_000))),
        422,
        ["input.input_image", f"more than {DEFAULT_MAX_PIXELS} pixels"],
        id="bomb-8000x8000",
    ),
    pytest.param(
        with_input(depth_image=data_uri(png_claiming_size(100_000, 100_000))),
        422,
        ["input.depth_image", f"more than {DEFAULT_MAX_PIXELS} pixels"],
        id="bomb-as-depth-image",
    ),
    # URL schemes other than http(s) and data.
    pytest.param(with_input(input_image="file:///etc/passwd"), 422, ["input.input_image", "file"], id="file-url"),
    pytest.param(
        with_input(input_image="gopher://127.0.0.1:70/_INFO"), 422, ["input.input_image", "gopher"], id="gopher-url"
    ),
    pytest.param(with_input(input_image="ftp://example.com/x.png"), 422, ["input.input_image", "ftp"], id="ftp-url"),
    pytest.param(
        with_input(depth_image="ftp://example.com/depth.png"), 422, ["input.depth_image", "ftp"], id="ftp-depth-url"
    ),
    pytest.param(with_input(input_image="http:///x.png"), 422, ["input.input_image", "no host"], id="url-without-host"),
    # URLs to private addresses (the stack leaves KILN_IMAGE_FETCH_ALLOW_PRIVATE off).
    pytest.param(
        with_input(input_image="http://10.0.0.1/x.png"), 422, ["input.input_image", "private"], id="private-10"
    ),
    pytest.param(
        with_input(input_image="http://192.168.1.1/x.png"), 422, ["input.input_image", "private"], id="private-192-168"
    ),
    pytest.param(
        with_input(input_image=f"http://127.0.0.1:{free_port()}/x.png"),
        422,
        ["input.input_image", "loopback"],
        id="loopback",
    ),
    pytest.param(
        with_input(input_image=f"http://localhost:{free_port()}/x.png"),
        422,
        ["input.input_image", "loopback"],
        id="localhost",
    ),
    pytest.param(
        with_input(input_image="http://[::1]/x.png"), 422, ["input.input_image", "loopback"], id="loopback-v6"
    ),
    pytest.param(
        with_input(input_image="http://[::ffff:10.0.0.1]/x.png"),
        422,
        ["input.input_image", "private"],
        id="v4-mapped-private",
    ),
    # Python counts 169.254/16 as private too, so the reason may say either; the address is named.
    pytest.param(
        with_input(input_image="http://169.254.169.254/latest/meta-data/"),
        422,
        ["input.input_image", "169.254.169.254", "address"],
        id="cloud-metadata",
    ),
    pytest.param(
        with_input(depth_image="https://10.1.2.3/depth.png"),
        422,
        ["input.depth_image", "private"],
        id="private-depth-image",
    ),
]


def newest_predictions(client) -> list[str]:
    """Ids on the tenant's first list page: a stored prediction would be the newest."""
    response = client.get("/v1/predictions")
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()["results"]]


@pytest.mark.parametrize(("request_kwargs", "status", "fragments"), CASES)
def test_bad_create_is_a_problem_naming_what_is_wrong(client, request_kwargs, status, fragments):
    before = newest_predictions(client)
    assert_problem(client.post("/v1/predictions", **request_kwargs), status, *fragments)
    assert newest_predictions(client) == before


REPEATED = {
    "cancel-after": ([("Cancel-After", "1h"), ("cancel-after", "1s")], "Cancel-After: sent more than once"),
    "idempotency-key": ([("Idempotency-Key", "a"), ("Idempotency-Key", "b")], "Idempotency-Key: sent more than once"),
    "prefer-is-one-list": ([("Prefer", "respond-async"), ("Prefer", "wait=abc")], "Prefer: wait must be a whole"),
}


@pytest.mark.parametrize(
    ("path", "repeated"),
    [
        *(("/v1/predictions", name) for name in REPEATED),
        ("/v1/predictions/batch", "cancel-after"),
        ("/v1/predictions/batch", "idempotency-key"),
    ],
)
def test_a_repeated_create_header_is_not_half_read(client, path, repeated):
    """A header taking one value sent twice is a 400 naming it (the first was taken); the ``Prefer`` headers
    are one list (only the first was read)."""
    headers, detail = REPEATED[repeated]
    before = newest_predictions(client)
    body = {"version": VERSION, "input": depth2img_input(width=64, height=64)}
    response = client.post(path, json=body if path == "/v1/predictions" else {"predictions": [body]}, headers=headers)
    assert_problem(response, 400, detail)
    assert newest_predictions(client) == before


def test_unknown_model_on_the_model_endpoint_is_a_404(client):
    before = newest_predictions(client)
    response = client.post("/v1/models/kiln/nope/predictions", json={"input": depth2img_input()})
    assert_problem(response, 404, "kiln/nope")
    assert newest_predictions(client) == before


def nested(depth: int) -> str:
    """A JSON value ``depth`` arrays deep."""
    return "[" * depth + "]" * depth


JSON_TYPES = ("application/json", "application/json; charset=utf-8")
# Every route that reads a JSON body, and a body for it (``{deep}``: where the nesting goes).
JSON_ROUTES = {
    "/v1/predictions": '{"version": "VERSION", "input": {"prompt": "x"}, "extra": {deep}}',
    "/v1/models/kiln/sd2-depth2img/predictions": '{"input": {"prompt": "x", "y": {deep}}}',
    "/v1/deployments/someone/some-deployment/predictions": '{"input": {"prompt": {deep}}}',
    "/v1/batches": '{"predictions": [{"version": "VERSION", "input": {deep}}]}',
    "/v1/predictions/batch": '{"predictions": [], "x": {deep}}',
    "/v1/webhooks/deliveries/retry": '{"since": {deep}}',
}


@pytest.mark.parametrize("depth", [65, 500, 950, 100_000])
@pytest.mark.parametrize("path", list(JSON_ROUTES))
def test_a_json_body_nested_too_deep_is_a_422_naming_the_body_on_every_route(client, path, depth):
    """Refused before it is parsed, whichever route and content type: the depths a parse survives but a
    later walk does not (Python's parser and the walks share one stack) were 500s, or a prediction created
    on the direct-create path where FastAPI's route answered 500."""
    before = newest_predictions(client)
    body = JSON_ROUTES[path].replace("{deep}", nested(depth)).replace("VERSION", VERSION)
    for content_type in JSON_TYPES:
        response = client.post(path, content=body, headers={"content-type": content_type})
        assert_problem(response, 422, "body: JSON nested deeper than 64 levels")
    assert newest_predictions(client) == before


UNREADABLE = {
    "a 5,000-digit integer": (b"9" * 5000, "body: an integer of more than 4300 digits"),
    "invalid UTF-8": (b'"a\xff"', "body: not valid UTF-8"),
}


@pytest.mark.parametrize("what", list(UNREADABLE))
@pytest.mark.parametrize("path", list(JSON_ROUTES))
def test_a_json_body_pythons_parser_cannot_read_is_a_422_saying_why_on_every_route(client, path, what):
    """What the parser raises for other than syntax was FastAPI's 400 "There was an error parsing the body",
    which named nothing."""
    before = newest_predictions(client)
    value, detail = UNREADABLE[what]
    body = JSON_ROUTES[path].replace("VERSION", VERSION).encode().replace(b"{deep}", value)
    for content_type in JSON_TYPES:
        assert_problem(client.post(path, content=body, headers={"content-type": content_type}), 422, detail)
    assert newest_predictions(client) == before


def test_a_body_nested_within_the_cap_is_read_as_before(client):
    body = {"version": VERSION, "input": depth2img_input(width=64, height=64), "extra": json.loads(nested(60))}
    for content_type in JSON_TYPES:
        response = client.post("/v1/predictions", content=json.dumps(body), headers={"content-type": content_type})
        assert response.status_code == 201, response.text


@pytest.mark.parametrize(("max_request_bytes", "body_size"), [(2048, 2049), (32 * 1024 * 1024, 32 * 1024 * 1024 + 1)])
def test_bodies_over_the_cap_are_a_413(stack, client, max_request_bytes, body_size):
    """Over the cap by one byte, declared up front (Content-Length) or streamed without a length."""
    before = newest_predictions(client)
    prefix, suffix = f'{{"version": "{VERSION}", "input": {{"prompt": "'.encode(), b'"}}'
    body = prefix + b"x" * (body_size - len(prefix) - len(suffix)) + suffix
    with app_for(stack, max_request_bytes=max_request_bytes) as app:
        declared = app.post("/v1/predictions", content=body, headers=AUTH | {"content-type": "application/json"})
        streamed = app.post(
            "/v1/predictions",
            content=iter([body[:1000], body[1000:]]),
            headers=AUTH | {"content-type": "application/json"},
        )
    assert_problem(declared, 413, str(max_request_bytes))
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413, str(max_request_bytes))
    assert newest_predictions(client) == before


@pytest.mark.parametrize("addresses", [["10.20.30.40"], ["93.184.216.34", "10.20.30.40"]], ids=["private", "mixed"])
def test_a_public_name_resolving_to_a_private_address_is_refused(stack, client, monkeypatch, addresses):
    """DNS cannot be made to lie here, so ``getaddrinfo`` answers for one made-up name; every
    address a name resolves to is checked, not just the first."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "images.example.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    before = newest_predictions(client)
    with app_for(stack) as app:
        response = app.post(
            "/v1/predictions", headers=AUTH, **with_input(input_image="http://images.example.test/x.png")
        )
    assert_problem(response, 422, "input.input_image", "private", "10.20.30.40")
    assert newest_predictions(client) == before


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("http://127.0.0.1:{private_port}/x.png", "loopback"),
        ("http://10.0.0.1/x.png", "private"),
        ("file:///etc/passwd", "file"),
    ],
)
def test_a_redirect_to_a_private_address_is_refused(stack, client, monkeypatch, location, fragment):
    """The first hop is on 127.0.0.2, which the guard is told to treat as public for this test;
    the redirect's target must still be checked, and the private server never hit."""
    import shared.security.ssrf

    real_reason = shared.security.ssrf.forbidden_reason
    monkeypatch.setattr(
        shared.security.ssrf,
        "forbidden_reason",
        lambda address, allow_private=False: (
            None if str(address) == "127.0.0.2" else real_reason(address, allow_private)
        ),
    )
    with ImageServer("127.0.0.1") as private, ImageServer("127.0.0.2") as redirector:
        redirector.redirect_to = location.format(private_port=private.port)
        before = newest_predictions(client)
        with app_for(stack, image_fetch_allow_private=False) as app:
            response = app.post("/v1/predictions", headers=AUTH, **with_input(input_image=redirector.url("/x.png")))
        assert_problem(response, 422, "input.input_image", fragment)
        assert (redirector.hits, private.hits) == (1, 0)
    assert newest_predictions(client) == before


@pytest.mark.parametrize("kind", ["silent", "trickling"])
def test_an_image_url_that_never_finishes_times_out(stack, client, kind):
    """A server that accepts and never answers, and one that sends a byte now and then: both are
    cut off by ``KILN_IMAGE_FETCH_TIMEOUT_S``."""
    before = newest_predictions(client)
    with (
        silent_listener() if kind == "silent" else ImageServer("127.0.0.1", trickle=True) as server,
        app_for(stack, image_fetch_allow_private=True, image_fetch_timeout_s=1) as app,
    ):
        response = app.post(
            "/v1/predictions", headers=AUTH, **with_input(input_image=f"http://127.0.0.1:{server.port}/x.png")
        )
    assert_problem(response, 422, "input.input_image", "timed out")
    assert newest_predictions(client) == before


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/predictions?source=bogus&source=api", "source"),  # the bad value was hidden
        ("/v1/predictions?source=web&source=api", "source"),  # one of the two was answered for
        ("/v1/predictions?created_after=abc&cursor=&created_after=2026-01-01T00:00:00Z", "created_after"),
        ("/v1/webhooks/deliveries?state=delivered&state=failed", "state"),
        ("/v1/batches?cursor=x&cursor=", "cursor"),
    ],
)
def test_a_query_parameter_sent_twice_is_a_400_naming_it(client, path, name):
    """FastAPI read the last value of a repeat silently, as a single-value header's repeat is refused."""
    assert_problem(client.get(path), 400, f"{name}: query parameter sent more than once")
    assert client.get(path.split("&")[0]).status_code in (200, 400)  # each alone is judged as before
    assert client.get("/v1/predictions?source=api&created_after=2026-01-01T00:00:00Z").status_code == 200
