"""The ``kiln`` client commands against a fake API (httpx.MockTransport): what each sends, what it prints
and its exit status. The webhook-delivery endpoints are fakes of the contract the API is given
(``GET /v1/webhooks/deliveries``, ``POST .../{webhook_id}/retry``, ``POST .../retry``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.cli import parser
from shared.client import batches, commands, predictions
from shared.client.config import ClientConfig
from shared.client.display import Display
from shared.client.http import KilnClient

BASE = "http://kiln.test"
TOKEN = "tok-cli"
Route = Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """Answers by (method, path); keeps every request it was sent."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return problem(404, f"no route {request.method} {request.url.path}")
        return route(request)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]


def problem(status: int, detail: str, **headers: str) -> httpx.Response:
    body = {"title": "problem", "detail": detail, "status": status}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"} | headers)


def kiln(argv: list[str], api: FakeApi, **env: str) -> int:
    args = parser().parse_args(argv)
    environment = {"KILN_URL": BASE, "KILN_TOKEN": TOKEN, "HOME": "/nonexistent"} | env
    return commands.main(args, environment, httpx.MockTransport(api), Display(live=False))


def prediction(status: str, **fields: object) -> dict:
    urls = {"get": f"{BASE}/v1/predictions/p1", "stream": f"{BASE}/v1/predictions/p1/stream?expires=9&sig=s"}
    return {"id": "p1", "model": "kiln/sd2-depth2img", "status": status, "urls": urls, "logs": ""} | fields


STREAM = (
    "event: status\ndata: processing\nid: 0-0\n\n: ping\n\n"
    "event: logs\ndata:  50%|#####     | 1/2 [00:00<00:00]\nid: 10-0\n\n"
    "event: output\ndata: http://kiln.test/v1/predictions/p1/output/out-0.png?sig=x\nid: 10-1\n\n"
    "event: done\ndata: {}\nid: 10-1-done\n\n"
)


def run_api(final: dict, stream: Route | None = None) -> FakeApi:
    return FakeApi(
        {
            ("POST", "/v1/files"): lambda r: httpx.Response(
                201, json={"id": "f1", "urls": {"get": f"{BASE}/v1/files/f1"}}
            ),
            ("POST", "/v1/predictions"): lambda r: httpx.Response(201, json=prediction("starting")),
            ("GET", "/v1/predictions/p1/stream"): stream
            or (lambda r: httpx.Response(200, text=STREAM, headers={"content-type": "text/event-stream"})),
            ("GET", "/v1/predictions/p1"): lambda r: httpx.Response(200, json=final),
            ("GET", "/v1/predictions/p1/output/out-0.png"): lambda r: httpx.Response(200, content=b"\x89PNG-0"),
            ("GET", "/v1/predictions/p1/output/out-1.png"): lambda r: httpx.Response(200, content=b"\x89PNG-1"),
        }
    )


def test_run_uploads_files_creates_follows_the_stream_and_saves_the_outputs(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG-in")
    outputs = [f"{BASE}/v1/predictions/p1/output/out-{n}.png?expires=9&sig=x" for n in (0, 1)]
    api = run_api(prediction("succeeded", output=outputs))
    (tmp_path / "out" / "out-0.png").parent.mkdir()
    (tmp_path / "out" / "out-0.png").write_bytes(b"kept")  # never overwritten
    argv = ["run", "kiln/sd2-depth2img", "-i", "prompt=a kiln", "-i", "num_inference_steps=2"]
    code = kiln([*argv, "-i", f"input_image=@{photo}", "-o", str(tmp_path / "out")], api)
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "out-0-1.png"), str(tmp_path / "out" / "out-1.png")]
    assert [Path(p).read_bytes() for p in printed] == [b"\x89PNG-0", b"\x89PNG-1"]
    assert (tmp_path / "out" / "out-0.png").read_bytes() == b"kept"
    created = json.loads(api.sent("POST", "/v1/predictions")[0].content)
    assert created == {
        "version": "kiln/sd2-depth2img",
        "input": {"prompt": "a kiln", "num_inference_steps": 2, "input_image": f"{BASE}/v1/files/f1"},
    }
    assert b'filename="photo.png"' in api.sent("POST", "/v1/files")[0].content
    stream = api.sent("GET", "/v1/predictions/p1/stream")[0]
    assert stream.url.params["kiln_status"] == "true" and stream.url.params["sig"] == "s"
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in api.requests)
    assert api.sent("POST", "/v1/predictions")[0].headers["idempotency-key"]


@pytest.mark.parametrize("status", ["failed", "canceled", "aborted"])
def test_run_exits_1_with_the_error_when_the_prediction_does_not_succeed(status, tmp_path, capsys):
    api = run_api(prediction(status, error="CUDA out of memory" if status == "failed" else None))
    assert kiln(["run", "kiln/sd2-depth2img", "-o", str(tmp_path)], api) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"prediction p1 {status}" in captured.err
    assert status != "failed" or "CUDA out of memory" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_run_polls_when_the_stream_is_refused(tmp_path, capsys, monkeypatch):
    answers = iter([prediction("processing", logs="  50%| | 1/2 [\n"), prediction("succeeded", output=[])])
    api = run_api({}, stream=lambda r: problem(429, "too many open streams"))
    api.routes[("GET", "/v1/predictions/p1")] = lambda r: httpx.Response(200, json=next(answers))
    monkeypatch.setattr(predictions, "POLL_FIRST_S", 0.0)
    assert kiln(["run", "kiln/sd2-depth2img", "-o", str(tmp_path)], api) == 0
    assert len(api.sent("GET", "/v1/predictions/p1")) == 2


def test_usage_http_and_connection_errors_exit_2_with_the_apis_detail(tmp_path, capsys):
    api = FakeApi({("POST", "/v1/predictions"): lambda r: problem(422, "input.num_inference_steps: at most 500")})
    assert kiln(["run", "kiln/sd2-depth2img", "-i", "num_inference_steps=9999"], api) == 2
    assert "HTTP 422: input.num_inference_steps: at most 500" in capsys.readouterr().err
    api = FakeApi({("GET", "/v1/predictions/p1"): lambda r: problem(401, "missing credentials")})
    assert kiln(["predictions", "get", "p1"], api) == 2
    assert "missing credentials (check --token, KILN_TOKEN" in capsys.readouterr().err
    assert kiln(["run", "no-slash"], api) == 2 and "owner/name" in capsys.readouterr().err
    assert kiln(["predictions", "get", "p1"], api, KILN_TOKEN="") == 2
    assert "no API token" in capsys.readouterr().err

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    assert kiln(["predictions", "list"], refuse) == 2  # type: ignore[arg-type]
    assert "no answer from the API at http://kiln.test" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["run"])
    assert exited.value.code == 2


def test_delete_prints_the_prediction_and_a_running_one_is_refused_with_exit_2(capsys):
    deleted = prediction("succeeded", data_removed=True)
    api = FakeApi({("DELETE", "/v1/predictions/p1"): lambda r: httpx.Response(200, json=deleted)})
    assert kiln(["predictions", "delete", "p1"], api) == 0
    assert json.loads(capsys.readouterr().out)["data_removed"] is True
    api.routes[("DELETE", "/v1/predictions/p1")] = lambda r: problem(409, "prediction 'p1' is processing: cancel it")
    assert kiln(["predictions", "delete", "p1"], api) == 2
    assert "HTTP 409: prediction 'p1' is processing: cancel it" in capsys.readouterr().err


def test_cancel_and_list_follow_the_api_and_its_pages(capsys):
    pages = {
        None: {
            "results": [prediction("processing"), prediction("succeeded", id="p0")],
            "next": "http://public/v1/predictions?cursor=c2",
        },
        "c2": {"results": [prediction("failed", id="p-old")], "next": None},
    }
    api = FakeApi(
        {
            ("GET", "/v1/predictions"): lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]),
            ("POST", "/v1/predictions/p1/cancel"): lambda r: httpx.Response(200, json=prediction("canceled")),
        }
    )
    assert kiln(["predictions", "list"], api) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["p1", "processing"], ["p0", "succeeded"], ["p-old", "failed"]]
    # The next page's URL names the API's public host: it is asked of the configured one, with the token.
    assert [str(r.url) for r in api.requests][-1] == f"{BASE}/v1/predictions?cursor=c2"
    assert kiln(["predictions", "list", "--limit", "1", "--json"], api) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["p1"]
    assert kiln(["predictions", "cancel", "p1"], api) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "canceled"


def test_the_token_goes_only_to_the_configured_api_and_429s_are_waited_out(tmp_path):
    answers = iter(
        [problem(429, "slow down", **{"Retry-After": "3"}), httpx.Response(200, json=prediction("starting"))]
    )
    api = FakeApi(
        {
            ("GET", "/v1/predictions/p1"): lambda r: next(answers),
            ("GET", "/elsewhere/out.png"): lambda r: httpx.Response(200, content=b"x"),
        }
    )
    slept: list[float] = []
    with KilnClient(ClientConfig(BASE, TOKEN), httpx.MockTransport(api), sleep=slept.append) as client:
        assert client.prediction("p1")["status"] == "starting"
        client.download("https://cdn.example/elsewhere/out.png?sig=x", tmp_path, "out.png")
    assert slept == [3.0]
    assert "authorization" not in api.requests[-1].headers and api.requests[0].headers["authorization"]


def batch_object(status: str, **counts: int) -> dict:
    every = {"starting": 0, "processing": 0, "succeeded": 0, "failed": 0, "canceled": 0, "aborted": 0}
    urls = {"get": f"{BASE}/v1/batches/b1", "results": f"{BASE}/v1/batches/b1/results"}
    return {"id": "b1", "status": status, "counts": every | {"total": 3, "invalid": 0} | counts, "urls": urls}


def batch_api(states: list[dict]) -> FakeApi:
    answers = iter(states)
    results = "".join(json.dumps({"line": n, "id": f"p{n}", "status": "succeeded"}) + "\n" for n in (1, 2, 3))
    return FakeApi(
        {
            ("POST", "/v1/files"): lambda r: httpx.Response(
                201, json={"id": "f9", "urls": {"get": f"{BASE}/v1/files/f9"}}
            ),
            ("POST", "/v1/batches"): lambda r: httpx.Response(201, json=batch_object("queued", starting=3)),
            ("GET", "/v1/batches/b1"): lambda r: httpx.Response(200, json=next(answers)),
            ("GET", "/v1/batches/b1/results"): lambda r: httpx.Response(200, text=results),
        }
    )


def test_batch_submit_waits_and_writes_the_results_in_order(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batches, "POLL_S", 0.0)
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n\n{"input": {"prompt": "b"}}\n{"version": "kiln/x", "input": {}}\n')
    api = batch_api([batch_object("running", processing=1, succeeded=1), batch_object("completed", succeeded=3)])
    out = tmp_path / "results.jsonl"
    assert kiln(["batch", "submit", str(source), "--model", "kiln/sd2-depth2img", "--results", str(out)], api) == 0
    assert capsys.readouterr().out == "b1\n"
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 2, 3]
    assert json.loads(api.sent("POST", "/v1/batches")[0].content) == {"input_file": f"{BASE}/v1/files/f9"}
    uploaded = api.sent("POST", "/v1/files")[0].content
    assert b'{"version": "kiln/sd2-depth2img", "input": {"prompt": "a"}}\n\n' in uploaded
    assert b'{"version": "kiln/x", "input": {}}' in uploaded and b"application/jsonl" in uploaded
    assert len(api.sent("GET", "/v1/batches/b1")) == 2


def test_batch_submit_exits_1_when_an_item_failed_and_0_without_waiting(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batches, "POLL_S", 0.0)
    source = tmp_path / "in.jsonl"
    source.write_text('{"version": "kiln/x", "input": {}}\n')
    api = batch_api([batch_object("completed", succeeded=2, failed=1)])
    assert kiln(["batch", "submit", str(source), "--wait"], api) == 1
    assert "batch b1 completed: 1 failed" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.partial"))
    assert kiln(["batch", "submit", str(source)], batch_api([])) == 0
    assert kiln(["batch", "submit", str(tmp_path / "missing.jsonl")], batch_api([])) == 2
    nowhere = batch_api([])
    assert kiln(["batch", "submit", str(source), "--results", str(tmp_path / "no" / "out.jsonl")], nowhere) == 2
    assert "no directory" in capsys.readouterr().err and nowhere.requests == []


def delivery(n: int) -> dict:
    return {
        "webhook_id": f"msg_{n}",
        "event": "completed",
        "prediction_id": f"p{n}",
        "attempts": 5,
        "url": "https://hook",
    }


def test_webhooks_failed_lists_every_page_with_the_filter(capsys):
    pages = {
        None: {"results": [delivery(1), delivery(2)], "next": f"{BASE}/v1/webhooks/deliveries?state=failed&cursor=2"},
        "2": {"results": [delivery(3)], "next": None},
    }
    api = FakeApi(
        {("GET", "/v1/webhooks/deliveries"): lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")])}
    )
    assert kiln(["webhooks", "failed", "--since", "2026-12-01T00:00:00"], api) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["msg_1", "msg_2", "msg_3"]
    first = api.requests[0].url.params
    assert (first["state"], first["since"]) == ("failed", "2026-12-01T00:00:00Z")
    assert kiln(["webhooks", "failed", "--json"], api) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[2]) == delivery(3)
    assert kiln(["webhooks", "failed", "--since", "last tuesday"], api) == 2


def test_webhooks_retry_one_or_every_failed_one(capsys):
    api = FakeApi(
        {
            ("POST", "/v1/webhooks/deliveries/msg_1/retry"): lambda r: httpx.Response(202, json=delivery(1)),
            ("POST", "/v1/webhooks/deliveries/retry"): lambda r: httpx.Response(202, json={"retried": 4}),
        }
    )
    assert kiln(["webhooks", "retry", "msg_1"], api) == 0
    assert json.loads(capsys.readouterr().out)["webhook_id"] == "msg_1"
    assert kiln(["webhooks", "retry", "--all-failed", "--since", "2026-12-01T00:00:00Z"], api) == 0
    assert json.loads(capsys.readouterr().out) == {"retried": 4}
    assert json.loads(api.requests[-1].content) == {"state": "failed", "since": "2026-12-01T00:00:00Z"}
    assert kiln(["webhooks", "retry", "--all-failed"], api) == 0
    assert json.loads(api.requests[-1].content) == {"state": "failed"}
    for wrong in (
        ["webhooks", "retry"],
        ["webhooks", "retry", "msg_1", "--all-failed"],
        ["webhooks", "retry", "m", "--since", "1h"],
    ):
        assert kiln(wrong, api) == 2
    api.routes[("POST", "/v1/webhooks/deliveries/msg_9/retry")] = lambda r: problem(404, "delivery 'msg_9' not found")
    assert kiln(["webhooks", "retry", "msg_9"], api) == 2
    assert "delivery 'msg_9' not found" in capsys.readouterr().err
