"""The ``kiln`` client's own parsing: where the URL and token come from, ``-i key=value``, ``--since``,
``--model`` lines, and the event stream's format."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.client.batches import with_model
from shared.client.config import DEFAULT_URL, resolve
from shared.client.errors import UsageError
from shared.client.inputs import check_model, parse_inputs, parse_since
from shared.client.predictions import file_name
from shared.client.sse import Event, parse_events


def write_config(home, text: str) -> None:
    folder = home / ".config" / "kiln"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(text)


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path):
    write_config(tmp_path, 'url = "http://file:1"\ntoken = "file-token"\n')
    env = {"HOME": str(tmp_path)}
    assert resolve(None, None, env) == resolve(None, None, env | {"KILN_URL": ""})
    assert (resolve(None, None, env).url, resolve(None, None, env).token) == ("http://file:1", "file-token")
    env |= {"KILN_URL": "http://env:2/", "KILN_TOKEN": "env-token"}
    assert (resolve(None, None, env).url, resolve(None, None, env).token) == ("http://env:2", "env-token")
    assert resolve("https://flag:3", "flag-token", env) == type(resolve(None, None, env))(
        "https://flag:3", "flag-token"
    )
    # XDG_CONFIG_HOME moves the file; without any URL the local stack's is used.
    xdg = tmp_path / "xdg"
    write_config(xdg.parent / "other", 'token = "t"')
    assert resolve(None, None, {"XDG_CONFIG_HOME": str(xdg.parent / "other" / ".config")}).url == DEFAULT_URL


def test_a_missing_token_or_a_bad_file_or_url_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError, match=r"no API token.*KILN_TOKEN.*config\.toml"):
        resolve(None, None, {"HOME": str(tmp_path)})
    write_config(tmp_path, "url = [")
    with pytest.raises(UsageError, match=r"config\.toml: cannot read it as TOML"):
        resolve(None, "t", {"HOME": str(tmp_path)})
    (tmp_path / ".config" / "kiln" / "config.toml").write_text("token = 5\n")
    with pytest.raises(UsageError, match="token must be a string"):
        resolve(None, None, {"HOME": str(tmp_path)})
    with pytest.raises(UsageError, match="http:// or https://"):
        resolve("ftp://x", "t", {"HOME": str(tmp_path / "none")})


def test_input_values_are_json_when_they_parse_and_at_paths_are_uploaded(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG...")
    uploads = []

    def upload(name: str, data: bytes, kind: str) -> str:
        uploads.append((name, data, kind))
        return "http://api/v1/files/f1"

    pairs = ["steps=4", "strength=0.5", "flag=true", "sizes=[1, 2]", "prompt=a brick kiln", 'seed="7"', "empty="]
    found = parse_inputs([*pairs, f"image=@{photo}", "eq=a=b"], upload)
    assert found == {
        "steps": 4,
        "strength": 0.5,
        "flag": True,
        "sizes": [1, 2],
        "prompt": "a brick kiln",
        "seed": "7",
        "empty": "",
        "image": "http://api/v1/files/f1",
        "eq": "a=b",
    }
    assert uploads == [("photo.png", b"\x89PNG...", "image/png")]
    with pytest.raises(UsageError, match="cannot read the file"):
        parse_inputs([f"image=@{tmp_path / 'missing.png'}"], upload)
    for bad in ("novalue", "=5"):
        with pytest.raises(UsageError, match="key=value"):
            parse_inputs([bad], upload)
    with pytest.raises(UsageError, match="given twice"):
        parse_inputs(["a=1", "a=2"], upload)


def test_models_are_owner_slash_name_with_an_optional_version():
    assert check_model("kiln/sd2-depth2img:abc123") == "kiln/sd2-depth2img:abc123"
    for bad in ("sd2", "kiln/", "/x", "a/b/c", "kiln/sd2 depth"):
        with pytest.raises(UsageError, match="owner/name"):
            check_model(bad)


def test_since_takes_iso_times_and_durations_back_from_now():
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == "2026-12-06T10:30:00Z"
    assert parse_since("1d2h", now) == "2026-12-05T10:00:00Z"
    assert parse_since("2026-12-01T08:00:00") == "2026-12-01T08:00:00Z"  # no offset: UTC
    assert parse_since("2026-12-01T08:00:00+02:00") == "2026-12-01T06:00:00Z"
    assert parse_since("9999-12-31T23:59:59Z") == "9999-12-31T23:59:59Z"
    for bad in ("yesterday", "", "5x", "0001-01-01T00:00:00+14:00", "99999999999d", "10**23"):
        with pytest.raises(UsageError, match="--since"):
            parse_since(bad, now)


def test_model_lines_get_the_model_and_keep_their_line_numbers():
    lines = [
        {"prompt": "bare input"},
        {"input": {"prompt": "a body"}, "webhook": "https://example.com/hook"},
        {"model": "kiln/other", "input": {"prompt": "its own model"}},
    ]
    data = "\n".join([json.dumps(lines[0]), "", json.dumps(lines[1]), "{not json", json.dumps(lines[2]), "[1]"])
    out = with_model((data + "\r\n").encode(), "kiln/sd2-depth2img").split(b"\n")
    assert len(out) == 7 and out[1] == b"" and out[3] == b"{not json" and out[5] == b"[1]\r"  # kept as they are
    assert json.loads(out[0]) == {"version": "kiln/sd2-depth2img", "input": {"prompt": "bare input"}}
    assert json.loads(out[2]) == {"version": "kiln/sd2-depth2img"} | lines[1]
    assert json.loads(out[4]) == lines[2]
    deep = b"[" * 100_000
    assert with_model(deep, "kiln/x") == deep


def test_event_stream_lines_become_events():
    lines = [": ping", "", "event: logs", "id: 1", "data:  5%|  | 1/20 [", "", "event: output", "data: http://x/a"]
    lines += ["data: second", "", "event: done", "data: {}", ""]
    assert list(parse_events(lines)) == [
        Event("logs", " 5%|  | 1/20 [", "1"),
        Event("output", "http://x/a\nsecond", "1"),
        Event("done", "{}", "1"),
    ]


def test_an_output_is_saved_under_its_own_name_never_a_path():
    base = "http://kiln.test/v1/predictions/p1/output"
    assert file_name(f"{base}/out-0.png?expires=1&sig=x", 0) == "out-0.png"
    assert file_name(f"{base}/face%20embedding.safetensors", 1) == "face embedding.safetensors"
    for hostile in ("..%2F..%2F.bashrc", "..", "a%5Cb", "x%00.png", ""):
        assert file_name(f"{base}/{hostile}", 2) == "output-2"
