"""docker-compose.yml: valid against the Compose specification (the schema check-jsonschema vendors,
so no download) and shaped as the single-GPU-host deployment docs/deploy.md describes."""

from __future__ import annotations

import json
import re
from importlib import resources

import jsonschema
import pytest

from shared.scheduling import queues
from shared.settings import Settings
from tests.support.deploy import REPO_ROOT, compose, load_yaml

SERVICES = {"redis", "s3", "api", "worker-sd2", "worker-sdxl", "webhooks", "flower", "prometheus"}
# `--profile ha` (tests/deploy/test_compose_ha.py).
HA = {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
GPU_WORKERS = {"worker-sd2": queues.SD2_DEPTH, "worker-sdxl": queues.SDXL}
MONITORING = {"flower", "prometheus"}


def compose_schema() -> dict:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(vendored.read_text())


def queue_argument(command: list[str]) -> str:
    return command[command.index("-Q") + 1]


def test_compose_file_validates_against_the_compose_specification():
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_malformed_service():
    schema = compose_schema()
    broken = compose()
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")
    broken["services"]["redis"]["depends_on"] = {"s3": {"condition": "when_ready"}}
    flagged = {tuple(e.absolute_path) for e in jsonschema.validators.validator_for(schema)(schema).iter_errors(broken)}
    assert ("services", "api") in flagged
    assert any(path[:3] == ("services", "redis", "depends_on") for path in flagged), flagged


def test_every_service_is_there_with_a_healthcheck():
    services = compose()["services"]
    assert set(services) == SERVICES | HA
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD" and not check.get("disable"), f"{name} has no healthcheck"
    assert {name for name, s in services.items() if s.get("profiles")} == MONITORING | HA


def test_dependencies_wait_for_health():
    services = compose()["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            assert condition == {"condition": "service_healthy"}, (name, dependency, condition)
            assert "healthcheck" in services[dependency]
    for name in ("api", *GPU_WORKERS, "webhooks"):
        assert set(services[name]["depends_on"]) == {"redis", "s3"}, name


def test_redis_keeps_an_append_only_file_on_a_volume():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_redis_wants_the_password_that_every_client_of_it_uses():
    services = compose()["services"]
    command = services["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert password == "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password
    urls = {name: spec.get("environment", {}).get("KILN_REDIS_URL") for name, spec in services.items()}
    urls["flower"] = services["flower"]["environment"]["CELERY_BROKER_URL"]
    clients = {name: url for name, url in urls.items() if url}
    assert set(clients) >= {"api", *GPU_WORKERS, "webhooks", "flower"}, clients
    for name, url in clients.items():
        assert url == f"redis://:{password}@redis:6379/0", name


def test_s3_is_a_pinned_seaweedfs_that_creates_the_bucket():
    s3 = compose()["services"]["s3"]
    image, _, tag = s3["image"].partition(":")
    assert image == "chrislusf/seaweedfs" and re.fullmatch(r"\d+\.\d+", tag), s3["image"]
    assert "mini" in s3["command"] and "-bucket=${KILN_S3_BUCKET:-kiln}" in s3["command"]
    identities = compose()["configs"]["s3-identities"]["content"]
    assert "${KILN_S3_ACCESS_KEY:?" in identities and "${KILN_S3_SECRET_KEY:?" in identities


def test_gpu_workers_reserve_a_gpu_share_the_weights_and_consume_their_family():
    services = compose()["services"]
    for name, queue in GPU_WORKERS.items():
        worker = services[name]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
        assert "weights:/weights" in worker["volumes"], name
        assert queue_argument(worker["command"]) == queue
        assert worker["command"][worker["command"].index("--pool") + 1] == "solo"
        # A stop lets the longest prediction finish: grace period above the time limit.
        grace_s = int(worker["environment"]["KILN_SHUTDOWN_GRACE_S"])
        assert grace_s >= Settings.model_fields["prediction_time_limit_s"].default
        assert _duration_s(worker["stop_grace_period"]) > grace_s
    webhooks = services["webhooks"]
    assert queue_argument(webhooks["command"]) == queues.WEBHOOKS and "deploy" not in webhooks
    assert "weights" in compose()["volumes"]


def test_the_webhook_worker_runs_its_own_entry_point_on_the_api_image():
    services = compose()["services"]
    webhooks, api = services["webhooks"], services["api"]
    assert (webhooks["image"], webhooks["build"]) == (api["image"], api["build"])
    assert webhooks["build"]["dockerfile"] == "deploy/docker/Dockerfile.api"
    assert webhooks["command"][webhooks["command"].index("-A") + 1] == "webhook_worker.celery_app:app"
    for name in GPU_WORKERS:
        command = services[name]["command"]
        assert command[command.index("-A") + 1] == "worker.celery_app:app"


def test_workers_serve_metrics_where_their_healthcheck_and_prometheus_look():
    services = compose()["services"]
    scrape = load_yaml(REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml")
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert "api:8000" in targets
    for name in (*GPU_WORKERS, "webhooks"):
        port = services[name]["environment"]["KILN_WORKER_METRICS_PORT"]
        assert f"{name}:{port}" in targets
        assert f"127.0.0.1:{port}/metrics" in " ".join(services[name]["healthcheck"]["test"])
        assert services[name]["environment"]["KILN_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("service", ["api", *GPU_WORKERS, "webhooks"])
def test_kiln_services_read_dot_env_and_reach_redis_and_s3_by_service_name(service):
    spec = compose()["services"][service]
    assert spec["env_file"] == [{"path": ".env", "required": True}]
    assert spec["environment"]["KILN_REDIS_URL"].endswith("@redis:6379/0")
    assert spec["environment"]["KILN_S3_ENDPOINT_URL"] == "http://s3:8333"
    for key in spec["environment"]:
        assert key.removeprefix("KILN_").lower() in Settings.model_fields, f"{service}: {key} is not a setting"


def _duration_s(text: str) -> int:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match and text, text
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds
