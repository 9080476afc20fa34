"""deploy/k8s/base: every object valid for Kubernetes (kubernetes-validate's bundled schemas, offline)
or, for KEDA's ScaledObject, for the schema in tests/deploy/schemas; and the scaling wired to the
queues the workers really consume."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.scheduling import queues
from shared.settings import Settings
from tests.support.deploy import K8S_BASE, SCHEMAS, load_all_yaml, load_yaml

KUBERNETES_VERSION = "1.32.0"
CRD_KINDS = {"ScaledObject"}
GPU_WORKERS = {"kiln-worker-sd2": queues.SD2_DEPTH, "kiln-worker-sdxl": queues.SDXL}


def kustomization() -> dict:
    return load_yaml(K8S_BASE / "kustomization.yaml")


def objects() -> list[dict]:
    return [doc for resource in kustomization()["resources"] for doc in load_all_yaml(K8S_BASE / resource)]


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in objects() if doc["kind"] == kind}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(deployment).get("env", [])}


def scaled_object_schema() -> dict:
    return json.loads((SCHEMAS / "keda-scaledobject.schema.json").read_text())


def validate_scaled_object(document: dict) -> list[str]:
    schema = scaled_object_schema()
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_kustomization_names_every_manifest():
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_builds_the_base():
    built = subprocess.run(["kubectl", "kustomize", str(K8S_BASE)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in objects()
    )
    assert all(d["metadata"].get("namespace") == "kiln" for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize(
    "document",
    [d for d in objects() if d["kind"] not in CRD_KINDS],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_kubernetes_objects_validate(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validation_catches_mistakes():
    deployment = copy.deepcopy(by_kind("Deployment")["kiln-api"])
    container(deployment)["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(by_kind("Deployment")["kiln-api"])
    container(deployment)["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_scaled_objects_validate(name):
    assert validate_scaled_object(by_kind("ScaledObject")[name]) == []


def test_scaled_object_schema_catches_mistakes():
    good = by_kind("ScaledObject")["kiln-worker-sd2"]
    for breaking in (
        lambda so: so["spec"].pop("scaleTargetRef"),
        lambda so: so["spec"]["triggers"][0]["metadata"].pop("listName"),
        lambda so: so["spec"]["triggers"][0]["metadata"].update(listLenght="2"),
        lambda so: so["spec"]["triggers"][0]["metadata"].update(listLength=2),
        lambda so: so["spec"]["advanced"]["scalingModifiers"].update(metricType="Sum"),
        lambda so: so["spec"].update(maxReplicas=3),
    ):
        broken = copy.deepcopy(good)
        breaking(broken)
        assert validate_scaled_object(broken), broken


def consumed_queue(deployment: dict) -> str:
    command = container(deployment)["command"]
    return command[command.index("-Q") + 1]


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_each_gpu_queue_scales_on_the_sum_of_its_priority_lists(name):
    scaled = by_kind("ScaledObject")[name]
    target = by_kind("Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    queue = consumed_queue(target)
    assert queue == GPU_WORKERS[name]
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "redis" for t in triggers)
    # One trigger per list kombu writes for this queue, named from the same constants.
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(queues.priority_lists(queue).values())
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert modifiers["metricType"] == "AverageValue"
    assert sorted(re.split(r"\s*\+\s*", modifiers["formula"])) == sorted(t["name"] for t in triggers)
    assert int(modifiers["target"]) >= 1 and modifiers["activationTarget"] == "0"


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_keda_reads_redis_where_the_workers_do(name):
    """addressFromEnv/passwordFromEnv name variables of the target container (from its ConfigMap/Secret)."""
    scaled = by_kind("ScaledObject")[name]
    target = by_kind("Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    available = set(env_of(target))
    for source in container(target)["envFrom"]:
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        document = by_kind(kind)[ref["name"]]
        available |= set(document.get("data", {})) | set(document.get("stringData", {}))
    for trigger in scaled["spec"]["triggers"]:
        assert {trigger["metadata"]["addressFromEnv"], trigger["metadata"]["passwordFromEnv"]} <= available
    address = by_kind("ConfigMap")["kiln-config"]["data"]["REDIS_ADDRESS"]
    url = by_kind("Secret")["kiln-secrets"]["stringData"]["KILN_REDIS_URL"]
    assert url.split("@", 1)[1].startswith(address + "/")


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_gpu_workers_outlast_their_longest_prediction_when_stopped(name):
    worker = by_kind("Deployment")[name]
    pod = worker["spec"]["template"]["spec"]
    grace_s = float(env_of(worker)["KILN_SHUTDOWN_GRACE_S"])
    assert grace_s >= Settings.model_fields["prediction_time_limit_s"].default
    assert pod["terminationGracePeriodSeconds"] > grace_s
    resources = container(worker)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "weights", "mountPath": "/weights"} in container(worker)["volumeMounts"]
    command = container(worker)["command"]
    assert command[command.index("--pool") + 1] == "solo"


def test_the_webhook_worker_runs_its_own_entry_point_on_the_api_image():
    deployments = by_kind("Deployment")
    webhooks = container(deployments["kiln-worker-webhooks"])
    assert webhooks["image"] == container(deployments["kiln-api"])["image"] == "kiln-api"
    command = webhooks["command"]
    assert command[command.index("-A") + 1] == "webhook_worker.celery_app:app"
    for name in GPU_WORKERS:
        command = container(deployments[name])["command"]
        assert command[command.index("-A") + 1] == "worker.celery_app:app"


def test_api_scales_on_cpu_and_the_webhook_worker_needs_no_gpu():
    assert consumed_queue(by_kind("Deployment")["kiln-worker-webhooks"]) == queues.WEBHOOKS
    assert "nvidia.com/gpu" not in json.dumps(by_kind("Deployment")["kiln-worker-webhooks"])
    api = by_kind("Deployment")["kiln-api"]
    assert container(api)["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container(api)["resources"]["requests"]["cpu"]
    hpa = by_kind("HorizontalPodAutoscaler")["kiln-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "kiln-api"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert set(by_kind("Service")) == {"kiln-api", "redis"}
    redis = by_kind("StatefulSet")["redis"]
    assert "--appendonly" in container(redis)["args"]


def test_kiln_variables_are_settings():
    names = set()
    for document in (*by_kind("ConfigMap").values(), *by_kind("Secret").values()):
        names |= set(document.get("data", {})) | set(document.get("stringData", {}))
    for deployment in by_kind("Deployment").values():
        names |= set(env_of(deployment))
    unknown = {
        n for n in names if n.startswith("KILN_") and n.removeprefix("KILN_").lower() not in Settings.model_fields
    }
    assert unknown == set()


def test_yaml_escapes_hold_kombus_separator():
    text = Path(K8S_BASE / "keda.yaml").read_text()
    assert "\\x06\\x16" in text and "\x06" not in text
