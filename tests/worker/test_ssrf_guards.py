"""Every outbound path gives the SSRF guard's verdict: image URLs, LoRA files and webhooks, at
submission and when connecting, for every address of the table in ``test_ssrf``; and a redirect
never leaves https. A fake resolver and a stand-in transport mean nothing here leaves the machine;
the TLS servers of the redirect tests listen on loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import httpx
import pytest
import trustme

import shared.security.ssrf
from api.errors import ProblemError
from api.intake.file_checks import check_file_inputs
from api.intake.submission import check_webhook
from models.registry import MODELS
from shared.inputs.images import ImageInputError, fetch_url
from shared.settings import Settings
from shared.webhooks.delivery import SignedBody, post_signed
from shared.webhooks.outbox import Delivery
from shared.webhooks.secrets import new_webhook_secret
from tests.support import png_bytes
from tests.support.addresses import ADDRESSES, LOCAL_DEVELOPMENT
from tests.support.image_servers import ImageServer, trust_in_the_guard
from worker.context import FileInputError, load_file_input, load_image_input
from worker.runner import describe_failure

HOST = "guarded.example"
XL = MODELS["kiln/ip-adapter-depth-xl"]
BASE_URL = "http://kiln.test"
# Stands in for a LoRA file: only whether it was fetched counts here.
LORA_BYTES = b"lora weights"
PREDICTION = SimpleNamespace(base_url=BASE_URL, tenant="me")


@pytest.fixture
def resolves_to(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The resolver answers ``HOST`` with the address set in the returned dict, and nothing else."""
    answer: dict[str, str] = {}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        assert host == HOST, f"only {HOST} may be resolved here, not {host}"
        address = answer["address"]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answer


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Stands in for the network: records each request the guard let out, and answers 200."""
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=png_bytes(4, 4) if request.url.path.endswith(".png") else LORA_BYTES)

    client = httpx.Client(transport=httpx.MockTransport(answer))
    monkeypatch.setattr(shared.security.ssrf, "pinned_client", lambda timeout_s: client)
    return requests


def image_fetch(allow_private: bool) -> None:
    """What the API does with an image URL at submission, and a worker with one it must fetch."""
    fetch_url(f"http://{HOST}/x.png", timeout_s=5, max_bytes=10_000, allow_private=allow_private)


def lora_submission(allow_private: bool) -> None:
    services = SimpleNamespace(settings=Settings(_env_file=None, image_fetch_allow_private=allow_private))
    check_file_inputs(XL, {"lora_weights": f"https://{HOST}/a.safetensors"}, services, "me", BASE_URL)  # type: ignore[arg-type]


def lora_fetch(allow_private: bool) -> None:
    """What a worker does with a LoRA URL."""
    settings = Settings(_env_file=None, image_fetch_allow_private=allow_private)
    url = f"https://{HOST}/a.safetensors"
    assert load_file_input(url, PREDICTION, None, settings, max_bytes=10_000, timeout_s=5) == LORA_BYTES  # type: ignore[arg-type]


def webhook_submission(allow_private: bool) -> None:
    services = SimpleNamespace(settings=Settings(_env_file=None, webhook_allow_private=allow_private))
    check_webhook(f"http://{HOST}/hook", services)  # type: ignore[arg-type]


def webhook_delivery(allow_private: bool) -> None:
    settings = Settings(_env_file=None, webhook_allow_private=allow_private)
    delivery = Delivery("d1", "p1", "completed", f"http://{HOST}/hook", "{}", 0.0, retry=True, tenant="me")
    result = post_signed(delivery, SignedBody("{}", [new_webhook_secret()]), settings)
    if not result.succeeded:
        raise ValueError(result.outcome)


PATHS: dict[str, Callable[[bool], None]] = {
    "image fetch": image_fetch,
    "LoRA at submission": lora_submission,
    "LoRA fetch": lora_fetch,
    "webhook at submission": webhook_submission,
    "webhook delivery": webhook_delivery,
}


def verdict(path: Callable[[bool], None], allow_private: bool) -> str:
    """Whether the path let the address through ("allowed") or refused it as not globally routable."""
    try:
        path(allow_private)
    except (ValueError, ProblemError) as exc:  # ImageInputError and FileInputError are ValueErrors
        message = exc.detail if isinstance(exc, ProblemError) else str(exc)
        assert "not globally routable" in message, message
        return "refused"
    return "allowed"


@pytest.mark.parametrize("allow_private", [False, True], ids=["strict", "local development"])
@pytest.mark.parametrize(("address", "reason"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_every_outbound_path_gives_the_same_verdict(resolves_to, sent, address, reason, allow_private):
    resolves_to["address"] = address
    allowed = reason is None or (allow_private and address in LOCAL_DEVELOPMENT)
    expected = "allowed" if allowed else "refused"
    verdicts = {name: verdict(path, allow_private) for name, path in PATHS.items()}
    assert verdicts == dict.fromkeys(PATHS, expected)
    # What was sent went to the address that was checked, never to the name resolved again.
    reached = {ipaddress.ip_address(request.url.host) for request in sent}
    assert reached == ({ipaddress.ip_address(address)} if allowed else set())


# --- Redirects never leave https -------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch, ca: trustme.CA) -> None:
    """Loopback passes as local development, and the guard's client trusts the test CA."""
    trust_in_the_guard(monkeypatch, ca)


@pytest.fixture
def servers(ca: trustme.CA, trusting: None) -> Iterator[tuple[ImageServer, ImageServer, ImageServer]]:
    """An https server that redirects, an https server and a plain http server, each serving ``LORA_BYTES``."""
    with (
        ImageServer("127.0.0.1", tls=ca, body=LORA_BYTES) as redirector,
        ImageServer("127.0.0.1", tls=ca, body=LORA_BYTES) as https,
        ImageServer("127.0.0.1", body=LORA_BYTES) as plain,
    ):
        yield redirector, https, plain


def fetch_lora(url: str) -> bytes:
    settings = Settings(_env_file=None, image_fetch_allow_private=True)
    return load_file_input(url, PREDICTION, None, settings, max_bytes=10_000, timeout_s=5)  # type: ignore[arg-type]


def test_a_lora_redirected_from_https_to_http_fails_the_prediction_and_is_never_fetched(servers):
    redirector, https, plain = servers
    redirector.redirect_to = https.url("/a.safetensors")
    assert fetch_lora(redirector.url("/a.safetensors")) == LORA_BYTES  # https to https is followed
    redirector.redirect_to = plain.url("/a.safetensors")
    with pytest.raises(FileInputError) as refused:
        fetch_lora(redirector.url("/a.safetensors"))
    error = describe_failure(refused.value)
    assert error.startswith("could not load a file input: ")
    assert f"redirects to {plain.url('/a.safetensors')}, which is not https" in error
    assert plain.hits == 0


def test_a_worker_follows_no_more_image_redirects_than_its_setting(servers):
    """An image URL the worker fetches itself (one not stored at submission) obeys
    ``KILN_IMAGE_FETCH_MAX_REDIRECTS`` as the API's fetch does."""
    redirector, https, _ = servers
    https.body = png_bytes(8, 8)
    redirector.redirect_to = https.url("/x.png")
    prediction = SimpleNamespace(base_url=BASE_URL, tenant="me", id="p1", input={}, input_files={})

    def load(max_redirects: int) -> object:
        settings = Settings(_env_file=None, image_fetch_allow_private=True, image_fetch_max_redirects=max_redirects)
        return load_image_input(redirector.url("/x.png"), prediction, None, settings)  # type: ignore[arg-type]

    assert load(1).size == (8, 8)  # type: ignore[attr-defined]
    with pytest.raises(ImageInputError, match="more than 0 redirects"):
        load(0)


def test_an_image_redirected_from_https_to_http_is_refused_and_never_fetched(servers):
    redirector, _, plain = servers
    redirector.redirect_to = plain.url("/x.png")
    with pytest.raises(ImageInputError, match="which is not https: a redirect may not leave https"):
        fetch_url(redirector.url("/x.png"), timeout_s=5, max_bytes=10_000, allow_private=True)
    assert (redirector.hits, plain.hits) == (1, 0)
