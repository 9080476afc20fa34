"""deploy/k8s/ha: the base with Redis behind Sentinel. Its objects as the overlay builds them (merged
here; compared with `kubectl kustomize` where installed) validate like the base's, and the pieces agree:
the sentinels Kiln and KEDA are told about are the ones deployed, watching the primary pod by name."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shared.scheduling import queues
from shared.settings import Settings
from tests.deploy.test_k8s import CRD_KINDS, GPU_WORKERS, KUBERNETES_VERSION, validate_scaled_object
from tests.support.deploy import (
    K8S_BASE,
    K8S_HA,
    heredocs,
    identity,
    kustomized,
    load_all_yaml,
    load_yaml,
    run_start_script,
)

NAMESPACE = "kiln"
SENTINEL_ENV = {"addressesFromEnv", "sentinelMasterFromEnv", "passwordFromEnv", "sentinelPasswordFromEnv"}


def objects() -> list[dict]:
    return kustomized(K8S_HA)


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in objects() if doc["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    (only,) = pod_spec(workload)["containers"]
    return only


def config() -> dict[str, str]:
    return by_kind("ConfigMap")["kiln-config"]["data"]


def pod_address(statefulset: dict, ordinal: int) -> str:
    """A StatefulSet pod's stable name through its headless Service, as seen from any namespace."""
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    return f"{name}-{ordinal}.{service}.{NAMESPACE}.svc.cluster.local"


def start_script(workload: dict) -> str:
    command = container(workload)["command"]
    assert command[:2] == ["sh", "-euc"], command
    return command[2]


def test_the_overlay_builds_on_the_base_from_files_that_exist():
    kustomization = load_yaml(K8S_HA / "kustomization.yaml")
    assert kustomization["resources"][0] == "../base" and kustomization["namespace"] == NAMESPACE
    for resource in kustomization["resources"]:
        assert (K8S_HA / resource).exists(), resource
    assert set(kustomization["resources"][1:]) | {p["path"] for p in kustomization["patches"]} == {
        p.name for p in K8S_HA.glob("*.yaml")
    } - {"kustomization.yaml"}
    base = {
        identity(d)
        for r in load_yaml(K8S_BASE / "kustomization.yaml")["resources"]
        for d in load_all_yaml(K8S_BASE / r)
    }
    for patch in kustomization["patches"]:
        for document in load_all_yaml(K8S_HA / patch["path"]):
            assert identity(document) in base, f"{patch['path']} patches {identity(document)}, not in the base"


def normalized(document: object) -> object:
    """Named items in name order, labels and namespace left out: what the offline merge does not do."""
    if isinstance(document, dict):
        return {k: normalized(v) for k, v in document.items() if k not in ("labels", "namespace")}
    if isinstance(document, list) and all(isinstance(i, dict) and "name" in i for i in document):
        return [normalized(i) for i in sorted(document, key=lambda i: i["name"])]
    if isinstance(document, list):
        return [normalized(i) for i in document]
    return document


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_builds_what_the_offline_merge_builds():
    built = subprocess.run(["kubectl", "kustomize", str(K8S_HA)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    documents = {identity(d): d for d in yaml.safe_load_all(built.stdout) if d}
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in documents.values() if d["kind"] != "Namespace")
    merged = {identity(d): d for d in objects()}
    assert set(documents) == set(merged)
    # The images kustomize pins in the base are the one field the offline merge leaves as written.
    for key in ("StatefulSet", "redis"), ("StatefulSet", "redis-sentinel"), ("ScaledObject", "kiln-worker-sdxl"):
        assert normalized(documents[key]) == normalized(merged[key]), key
    assert normalized(documents[("ConfigMap", "kiln-config")]) == normalized(merged[("ConfigMap", "kiln-config")])


@pytest.mark.parametrize(
    "document",
    [d for d in objects() if d["kind"] not in CRD_KINDS],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_kubernetes_objects_validate(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_scaled_objects_validate(name):
    assert validate_scaled_object(by_kind("ScaledObject")[name]) == []


def test_the_schema_knows_the_sentinel_scalers_fields():
    good = by_kind("ScaledObject")["kiln-worker-sd2"]
    for breaking in (
        lambda m: m.update(sentinelAddresses=m.pop("addressesFromEnv")),
        lambda m: m.update(sentinelMastr="kiln"),
        lambda m: m.pop("listName"),
        lambda m: m.update(addresses="sentinel-0"),
    ):
        broken = copy.deepcopy(good)
        breaking(broken["spec"]["triggers"][0]["metadata"])
        assert validate_scaled_object(broken), broken["spec"]["triggers"][0]


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_gpu_queues_scale_through_the_sentinels_on_every_priority_list(name):
    scaled = by_kind("ScaledObject")[name]
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-sentinel"}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
        queues.priority_lists(GPU_WORKERS[name]).values()
    )
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    assert sorted(re.split(r"\s*\+\s*", formula)) == sorted(t["name"] for t in triggers)


@pytest.mark.parametrize("name", sorted(GPU_WORKERS))
def test_keda_reads_the_sentinels_from_the_workers_environment(name):
    """The *FromEnv fields name variables the target container has (its ConfigMap and Secret)."""
    target = by_kind("Deployment")[by_kind("ScaledObject")[name]["spec"]["scaleTargetRef"]["name"]]
    available: set[str] = set()
    for source in container(target)["envFrom"]:
        if "configMapRef" in source:
            available |= set(by_kind("ConfigMap")[source["configMapRef"]["name"]]["data"])
        else:
            available |= set(by_kind("Secret")[source["secretRef"]["name"]]["stringData"])
    for trigger in by_kind("ScaledObject")[name]["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert set(metadata) >= SENTINEL_ENV
        assert {metadata[field] for field in SENTINEL_ENV} <= available
        assert metadata["addressesFromEnv"] == "KILN_REDIS_SENTINELS"
        assert metadata["sentinelMasterFromEnv"] == "KILN_REDIS_SENTINEL_MASTER"


def test_kiln_is_told_about_exactly_the_sentinels_deployed():
    sentinels = by_kind("StatefulSet")["redis-sentinel"]
    (port,) = container(sentinels)["ports"]
    expected = [f"{pod_address(sentinels, i)}:{port['containerPort']}" for i in range(sentinels["spec"]["replicas"])]
    assert config()["KILN_REDIS_SENTINELS"].split(",") == expected
    service = by_kind("Service")[sentinels["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == sentinels["spec"]["template"]["metadata"]["labels"]
    assert config()["KILN_REDIS_SENTINEL_MASTER"] == Settings.model_fields["redis_sentinel_master"].default
    for key in config():
        assert not key.startswith("KILN_") or key.removeprefix("KILN_").lower() in Settings.model_fields, key


def test_a_create_waits_for_a_replica_that_can_be_missing_once():
    redis = by_kind("StatefulSet")["redis"]
    acks = int(config()["KILN_REDIS_MIN_REPLICAS_ACK"])
    assert acks == 1 and redis["spec"]["replicas"] - 1 > acks
    assert by_kind("PodDisruptionBudget")["redis"]["spec"]["maxUnavailable"] == 1


def test_sentinels_watch_the_first_redis_pod_by_name_with_a_majority_quorum():
    sentinels, redis = by_kind("StatefulSet")["redis-sentinel"], by_kind("StatefulSet")["redis"]
    first_start, _passwords = heredocs(start_script(sentinels))
    monitor = next(line for line in first_start if line.startswith("sentinel monitor ")).split()
    assert monitor == ["sentinel", "monitor", "$SENTINEL_MASTER", pod_address(redis, 0), "6379", "2"]
    quorum, voters = int(monitor[-1]), sentinels["spec"]["replicas"]
    assert voters == 3 and voters // 2 + 1 == quorum
    assert by_kind("PodDisruptionBudget")["redis-sentinel"]["spec"]["minAvailable"] == quorum
    assert (
        f"sentinel announce-ip $POD_NAME.{sentinels['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local"
        in first_start
    )
    assert first_start.index("sentinel resolve-hostnames yes") < first_start.index(" ".join(monitor))
    environment = {e["name"]: e["valueFrom"] for e in container(sentinels)["env"]}
    assert environment["SENTINEL_MASTER"]["configMapKeyRef"] == {
        "name": "kiln-config",
        "key": "KILN_REDIS_SENTINEL_MASTER",
    }
    assert environment["REDIS_PASSWORD"]["secretKeyRef"] == {"name": "kiln-secrets", "key": "REDIS_PASSWORD"}


def test_redis_runs_three_pods_that_follow_the_first_and_announce_their_names():
    redis = by_kind("StatefulSet")["redis"]
    assert redis["spec"]["replicas"] == 3 and redis["spec"]["podManagementPolicy"] == "Parallel"
    script = start_script(redis)
    assert f'echo "replicaof {pod_address(redis, 0)} 6379"' in script
    assert f'--replica-announce-ip "$POD_NAME.{redis["spec"]["serviceName"]}.{NAMESPACE}.svc.cluster.local"' in script
    # The base's arguments (password, AOF) pass through to the server.
    assert container(redis)["command"][3:] == ["redis-server"] and '"$@"' in script
    assert "--appendonly" in container(redis)["args"] and "--masterauth" in script
    assert by_kind("Service")["redis"]["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("name", ["redis", "redis-sentinel"])
def test_one_pod_per_node_and_a_budget_for_each(name):
    workload = by_kind("StatefulSet")[name]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    (term,) = pod_spec(workload)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname" and term["labelSelector"]["matchLabels"] == labels
    assert by_kind("PodDisruptionBudget")[name]["spec"]["selector"]["matchLabels"] == labels
    assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize(
    "pod, expected", [("redis-0", ""), ("redis-2", "replicaof redis-0.redis.kiln.svc.cluster.local 6379\n")]
)
def test_a_redis_pod_writes_its_first_role_once(tmp_path: Path, pod, expected):
    script = start_script(by_kind("StatefulSet")["redis"])
    run_start_script(script, tmp_path, {"POD_NAME": pod, "REDIS_PASSWORD": "pw"}, "redis-server")
    assert (tmp_path / "redis.conf").read_text() == expected
    (tmp_path / "redis.conf").write_text("replicaof redis-1.redis.kiln.svc.cluster.local 6379\n")
    run_start_script(script, tmp_path, {"POD_NAME": pod, "REDIS_PASSWORD": "pw"}, "redis-server")
    assert (tmp_path / "redis.conf").read_text() == "replicaof redis-1.redis.kiln.svc.cluster.local 6379\n"


def test_a_restarted_sentinel_keeps_the_primary_it_learned(tmp_path: Path):
    script = start_script(by_kind("StatefulSet")["redis-sentinel"])
    environment = {"POD_NAME": "redis-sentinel-1", "SENTINEL_MASTER": "kiln", "REDIS_PASSWORD": "first"}
    run_start_script(script, tmp_path, environment, "redis-sentinel")
    conf = tmp_path / "sentinel.conf"
    conf.write_text(conf.read_text().replace("redis-0.redis", "redis-2.redis"))
    run_start_script(script, tmp_path, {**environment, "REDIS_PASSWORD": "second"}, "redis-sentinel")
    lines = conf.read_text().splitlines()
    assert "sentinel monitor kiln redis-2.redis.kiln.svc.cluster.local 6379 2" in lines
    assert "sentinel announce-ip redis-sentinel-1.redis-sentinel.kiln.svc.cluster.local" in lines
    assert [line for line in lines if "first" in line] == []
    assert lines[-3:] == ["requirepass second", "sentinel auth-pass kiln second", "sentinel sentinel-pass second"]
