"""Kiln's Redis Lua scripts (``shared/db/lua/``): every one renders whole, Redis compiles it, and the
commands print it."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.cli import run
from shared.db import lua
from shared.security.tokens import TokenRegistry
from tests.support import REPO_ROOT

# redis-py's register_script (whose NOSCRIPT fallback is SCRIPT LOAD, then EVALSHA), and Kiln's, which
# takes its script from the loader (the name it gives).
REGISTER = re.compile(r"\.register_script\(")
REGISTER_FROM_FILE = re.compile(r"""lua\.register\([\w.]+, "(\w+)"\)""")


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        yield client
        client.close()


def service_sources() -> list[str]:
    return [
        path.read_text()
        for package in ("api", "shared", "worker", "webhook_worker")
        for path in (REPO_ROOT / package).rglob("*.py")
    ]


def registered() -> set[str]:
    return {name for source in service_sources() for name in REGISTER_FROM_FILE.findall(source)}


def included() -> set[str]:
    return {
        name
        for path in lua.SCRIPTS.glob("*.lua")
        for name in re.findall(r"^-- include: (\w+)$", path.read_text(), re.M)
    }


def test_every_script_is_registered_from_a_file_by_kilns_register() -> None:
    calls = sum(len(REGISTER.findall(source)) for source in service_sources())
    from_files = sum(len(REGISTER_FROM_FILE.findall(source)) for source in service_sources())
    assert (calls, from_files) == (0, 38)
    assert registered() <= set(lua.names())


def test_every_file_is_registered_or_included() -> None:
    assert set(lua.names()) == registered() | included()


def test_the_scripts_ship_with_the_package() -> None:
    """pyproject's package data takes every file, so installed services (the API image) find them."""
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for pattern in package_data["shared.db"] for path in (REPO_ROOT / "shared/db").glob(pattern)}
    assert shipped >= set(lua.SCRIPTS.glob("*.lua")) and len(lua.names()) > 0


@pytest.mark.parametrize("name", lua.names())
def test_a_script_renders_with_no_placeholder_left(name: str) -> None:
    text = lua.script(name)
    assert not re.search(r"\{\{\s*[A-Za-z_]", text)
    assert text.startswith("-- ")


@pytest.mark.parametrize("name", lua.names())
def test_redis_compiles_every_script(real_redis: redis.Redis, name: str) -> None:
    """SCRIPT LOAD compiles the script: a syntax error is refused."""
    assert real_redis.script_load(lua.script(name)) == real_redis.script_load(lua.script(name))


def test_a_broken_script_is_refused(real_redis: redis.Redis) -> None:
    """The check above can fail: Redis refuses what does not compile."""
    with pytest.raises(redis.ResponseError):
        real_redis.script_load(lua.script("store_transition").replace("then return 0 end", "then return 0", 1))


def test_a_status_script_takes_each_prelude_once_in_order() -> None:
    """set_status includes status_table, queued_delta and batch_moved; batch_moved includes
    status_table (already there) and batch_finish."""
    text = lua.script("store_transition")
    defined = ["may_enter", "queued_delta", "batch_try_finish", "batch_moved", "set_status"]
    assert all(text.count(f"local function {name}(") == 1 for name in defined)
    assert sorted(defined, key=lambda name: text.index(f"local function {name}(")) == defined


def test_the_rules_on_files_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "top.lua").write_text("-- include: a\n-- include: b\nreturn {{X}} .. {{keys.prediction(ARGV[1])}}\n")
    (tmp_path / "a.lua").write_text("-- include: b\nlocal a = 1\n")
    (tmp_path / "b.lua").write_text("local b = 2\n")
    (tmp_path / "unknown.lua").write_text("return {{Y}}\n")
    monkeypatch.setattr(lua, "SCRIPTS", tmp_path)
    assert lua.render("top", {"X": "'x'"}) == (
        "-- include: a\n-- include: b\nlocal b = 2\nlocal a = 1\n-- include: b\n"
        "return 'x' .. 'kiln:prediction:' .. ARGV[1]\n"
    )
    with pytest.raises(KeyError, match="Y"):
        lua.render("unknown", {"X": "'x'"})


def test_the_state_table_renders_from_python() -> None:
    """fakeredis runs it: the constants and may_enter exist."""
    check = lua.script("status_table") + "return {STARTING, may_enter(STARTING, PROCESSING) and 1 or 0}"
    assert fakeredis.FakeRedis().eval(check, 0) == [b"starting", 1]


def test_the_module_prints_a_script_and_lists_the_names() -> None:
    def command(*args: str) -> str:
        found = subprocess.run(
            [sys.executable, "-m", "shared.db.lua", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
        )
        assert found.returncode == 0, found.stderr
        return found.stdout

    assert command("leases_reap") == lua.script("leases_reap")
    assert command().split() == lua.names()


def test_kiln_lua_prints_a_script_and_lists_the_names() -> None:
    registry = TokenRegistry(fakeredis.FakeRedis())
    printed, listed = io.StringIO(), io.StringIO()
    assert run(["lua", "store_records"], registry, printed) == 0
    assert printed.getvalue() == lua.script("store_records")
    run(["lua"], registry, listed)
    assert listed.getvalue().split() == lua.names()
