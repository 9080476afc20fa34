"""Deployments in Redis (fakeredis): per tenant, each change a new release, instance counts that
fit together, nothing written when they do not."""

from __future__ import annotations

import fakeredis
import pytest

from api.deployments import (
    BadConfiguration,
    Configuration,
    Deployment,
    DeploymentExists,
    DeploymentStore,
    Release,
)
from shared.predictions.record import utcnow

ACCOUNT = {"type": "user", "username": "alice", "name": "alice", "github_url": None}


def deployment(name: str = "app") -> Deployment:
    return Deployment(
        owner="alice",
        name=name,
        current_release=Release(
            number=1,
            model="kiln/sd2-depth2img",
            version="a" * 64,
            created_at=utcnow(),
            created_by=ACCOUNT,
            configuration=Configuration(hardware="gpu", min_instances=0, max_instances=1),
        ),
    )


def test_per_tenant_and_names_are_unique():
    store = DeploymentStore(fakeredis.FakeRedis())
    store.create("t1", deployment("b"))
    store.create("t1", deployment("a"))
    with pytest.raises(DeploymentExists):
        store.create("t1", deployment("a"))
    assert [d.name for d in store.list("t1")] == ["a", "b"]
    assert store.get("t2", "a") is None and store.list("t2") == []
    assert store.delete("t1", "a") and not store.delete("t1", "a")


def test_a_change_is_a_new_release_keeping_what_it_does_not_change():
    store = DeploymentStore(fakeredis.FakeRedis())
    store.create("t1", deployment())
    updated = store.release("t1", "app", ACCOUNT, max_instances=3)
    assert updated is not None
    release = updated.current_release
    assert (release.number, release.version, release.configuration.max_instances) == (2, "a" * 64, 3)
    again = store.release("t1", "app", ACCOUNT, version="b" * 64, hardware="gpu-h100")
    assert again is not None and again.current_release.number == 3
    assert (again.current_release.version, again.current_release.configuration.hardware) == ("b" * 64, "gpu-h100")
    assert store.get("t1", "app") == again
    assert store.release("t1", "missing", ACCOUNT, max_instances=2) is None


def test_counts_that_do_not_fit_change_nothing():
    store = DeploymentStore(fakeredis.FakeRedis())
    store.create("t1", deployment())
    with pytest.raises(BadConfiguration):
        store.release("t1", "app", ACCOUNT, min_instances=5)
    assert store.get("t1", "app").current_release.number == 1


def test_rendered_as_replicate_returns_it():
    rendered = deployment().render()
    assert set(rendered) == {"owner", "name", "current_release"}
    release = rendered["current_release"]
    assert set(release) == {"number", "model", "version", "created_at", "created_by", "configuration"}
    assert release["created_at"].endswith("Z")
    assert release["configuration"] == {"hardware": "gpu", "min_instances": 0, "max_instances": 1}
