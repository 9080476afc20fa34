"""docker-compose.yml's `ha` profile: a Redis replica and three sentinels, valid with the profile on or
off, watching the primary by its service name, and the start scripts keeping what a failover changed."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from shared.settings import Settings
from tests.deploy.test_compose import HA, compose_schema
from tests.support.deploy import COMPOSE_FILE, compose, heredocs, run_start_script

SENTINELS = sorted(name for name in HA if name.startswith("sentinel-"))
PASSWORD = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", '""', "--hash-max-listpack-value", "1024"]


def with_profiles(*profiles: str) -> dict:
    """The compose file as `docker compose --profile ...` runs it: services of other profiles left out."""
    document = compose()
    document["services"] = {
        name: spec
        for name, spec in document["services"].items()
        if not spec.get("profiles") or set(spec["profiles"]) & set(profiles)
    }
    return document


def script(service: str) -> str:
    command = compose()["services"][service]["command"]
    assert command[:2] == ["sh", "-euc"], command
    return command[2]


def sentinel_config(service: str) -> list[str]:
    """The config a sentinel writes on its first start (compose's `$$` as the shell sees it)."""
    first_start, _passwords = heredocs(script(service).replace("$$", "$"))
    return first_start


@pytest.mark.parametrize("profiles", [(), ("ha",), ("ha", "monitoring")], ids=str)
def test_the_file_validates_and_every_dependency_runs_with_and_without_the_ha_profile(profiles):
    document = with_profiles(*profiles)
    schema = compose_schema()
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(document))
    assert not errors, [e.message for e in errors]
    services = document["services"]
    for name, spec in services.items():
        assert set(spec.get("depends_on", {})) <= set(services), f"{name} needs a service {profiles} leaves out"
    assert (set(services) >= HA) == ("ha" in profiles)
    assert HA.isdisjoint(services) == ("ha" not in profiles)


def test_every_ha_service_is_in_the_ha_profile_only_and_has_a_healthcheck():
    services = compose()["services"]
    ha = {name for name, spec in services.items() if "ha" in spec.get("profiles", [])}
    assert ha == HA
    for name in HA:
        assert services[name]["profiles"] == ["ha"]
        assert services[name]["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert services[name]["user"] == "999:999"


def test_sentinels_monitor_the_primary_by_its_service_name_with_a_quorum_of_two():
    services = compose()["services"]
    for name in SENTINELS:
        config = sentinel_config(name)
        monitor = next(line for line in config if line.startswith("sentinel monitor "))
        assert monitor.split() == ["sentinel", "monitor", "$SENTINEL_MASTER", "redis", "6379", "2"]
        # Names, not addresses: resolving them must be on before the monitor line uses one.
        assert config.index("sentinel resolve-hostnames yes") < config.index(monitor)
        assert "sentinel announce-hostnames yes" in config
        assert "sentinel announce-ip $SENTINEL_NAME" in config
        environment = services[name]["environment"]
        assert environment["SENTINEL_NAME"] == name
        assert environment["SENTINEL_MASTER"] == "${KILN_REDIS_SENTINEL_MASTER:-kiln}"
        assert environment["REDIS_PASSWORD"] == environment["REDISCLI_AUTH"] == PASSWORD
        assert "sentinel down-after-milliseconds $SENTINEL_MASTER 5000" in config
        assert f"{name}-data:/data" in services[name]["volumes"]
    assert Settings.model_fields["redis_sentinel_master"].default == "kiln"


def test_the_stack_is_told_where_the_sentinels_are():
    """The header's KILN_REDIS_SENTINELS names every sentinel service, on the port they listen on."""
    (value,) = re.findall(r"KILN_REDIS_SENTINELS=(\S+)", COMPOSE_FILE.read_text())
    assert value.split(",") == [f"{name}:26379" for name in SENTINELS]
    for name in SENTINELS:
        assert "port 26379" in sentinel_config(name)


def test_the_replica_follows_the_primary_and_keeps_the_primarys_persistence():
    services = compose()["services"]
    replica = script("redis-replica").replace("$$", "$")
    assert 'echo "replicaof redis 6379" > /data/replica.conf' in replica
    arguments = replica.replace("\\\n", " ").split("exec redis-server /data/replica.conf ", 1)[1].split()
    assert arguments[arguments.index("--masterauth") + 1] == '"$REDIS_PASSWORD"'
    assert arguments[arguments.index("--requirepass") + 1] == '"$REDIS_PASSWORD"'
    assert arguments[arguments.index("--replica-announce-ip") + 1] == "redis-replica"
    primary = services["redis"]["command"]
    start = primary.index("--appendonly")
    assert arguments[arguments.index("--appendonly") :][: len(PERSISTENCE)] == PERSISTENCE
    assert [a or '""' for a in primary[start : start + len(PERSISTENCE)]] == PERSISTENCE
    # The primary can become a replica after a failover: it authenticates and is announced by name too.
    assert primary[primary.index("--masterauth") + 1] == PASSWORD
    assert primary[primary.index("--replica-announce-ip") + 1] == "redis"
    assert "redis-replica-data:/data" in services["redis-replica"]["volumes"]
    assert {"redis-replica-data", *(f"{name}-data" for name in SENTINELS)} <= set(compose()["volumes"])


def test_a_restarted_sentinel_keeps_what_it_learned_and_takes_the_new_password(tmp_path: Path):
    start = script("sentinel-1").replace("$$", "$")
    environment = {"SENTINEL_NAME": "sentinel-1", "SENTINEL_MASTER": "kiln", "REDIS_PASSWORD": "first"}
    run_start_script(start, tmp_path, environment, "redis-sentinel")
    conf = tmp_path / "sentinel.conf"
    lines = conf.read_text().splitlines()
    assert "sentinel monitor kiln redis 6379 2" in lines and "sentinel auth-pass kiln first" in lines
    # What the sentinel writes after a failover (CONFIG REWRITE): the new primary, a peer, a hashed user.
    text = conf.read_text().replace("monitor kiln redis 6379", "monitor kiln redis-replica 6379")
    conf.write_text(text + "user default on #0123 ~* &* +@all\nsentinel known-sentinel kiln sentinel-2 26379 ab\n")
    run_start_script(start, tmp_path, {**environment, "REDIS_PASSWORD": "second"}, "redis-sentinel")
    lines = conf.read_text().splitlines()
    assert "sentinel monitor kiln redis-replica 6379 2" in lines
    assert "sentinel known-sentinel kiln sentinel-2 26379 ab" in lines
    assert [line for line in lines if "first" in line or line.startswith("user ")] == []
    assert lines[-3:] == ["requirepass second", "sentinel auth-pass kiln second", "sentinel sentinel-pass second"]


def test_the_replica_writes_its_role_once(tmp_path: Path):
    start = script("redis-replica").replace("$$", "$")
    run_start_script(start, tmp_path, {"REDIS_PASSWORD": "pw"}, "redis-server")
    assert (tmp_path / "replica.conf").read_text() == "replicaof redis 6379\n"
    # Promoted by a failover (the sentinel rewrote the file without replicaof): a restart keeps that.
    (tmp_path / "replica.conf").write_text("# Generated by CONFIG REWRITE\n")
    run_start_script(start, tmp_path, {"REDIS_PASSWORD": "pw"}, "redis-server")
    assert (tmp_path / "replica.conf").read_text() == "# Generated by CONFIG REWRITE\n"
