"""Deployments through the official Python client: create, get, list, update (a new release),
predictions through one (``deployments.predictions.create`` and ``predictions.create(deployment=)``),
delete; per tenant; and the refusals, as problem+json."""

from __future__ import annotations

import secrets

import pytest
import replicate

from tests.support import assert_problem, data_uri, png_bytes
from tests.support.stack import TOKEN_A, TOKEN_B

pytestmark = pytest.mark.integration
MODEL = "kiln/sd2-depth2img"
INPUT = {"prompt": "a kiln", "num_inference_steps": 4, "seed": 7, "input_image": data_uri(png_bytes(64, 64))}


@pytest.fixture
def rc(stack) -> replicate.Client:
    return replicate.Client(api_token=TOKEN_A, base_url=stack.base_url)


@pytest.fixture
def created(rc) -> replicate.deployment.Deployment:
    version = rc.models.get(MODEL).latest_version.id
    deployment = rc.deployments.create(
        name=f"app-{secrets.token_hex(4)}",
        model=MODEL,
        version=version,
        hardware="gpu",
        min_instances=0,
        max_instances=2,
    )
    yield deployment
    rc.deployments.delete(deployment.owner, deployment.name)


def test_create_get_list_update_as_replicate_returns_them(rc, created):
    owner = rc.accounts.current().username
    assert created.owner == owner
    release = created.current_release
    assert (release.number, release.model, release.configuration.hardware) == (1, MODEL, "gpu")
    assert (release.configuration.min_instances, release.configuration.max_instances) == (0, 2)
    assert release.created_by.username == owner and release.created_at.endswith("Z")
    fetched = rc.deployments.get(f"{owner}/{created.name}")
    assert fetched.current_release.version == release.version
    assert created.name in [d.name for d in rc.deployments.list().results]
    updated = rc.deployments.update(owner, created.name, min_instances=1, max_instances=3)
    assert updated.current_release.number == 2
    assert (updated.current_release.configuration.min_instances, updated.current_release.version) == (
        1,
        release.version,
    )


def test_predictions_through_a_deployment_run_its_model_and_carry_it(rc, created):
    ref = f"{created.owner}/{created.name}"
    through = rc.deployments.get(ref).predictions.create(input=INPUT)
    also = rc.predictions.create(deployment=ref, input=INPUT)
    for prediction in (through, also):
        prediction.wait()
        assert prediction.status == "succeeded" and prediction.model == MODEL
        assert prediction.version == created.current_release.version
    body = rc._client.get(f"/v1/predictions/{also.id}").json()
    assert body["deployment"] == ref


def test_deployments_are_per_tenant(stack, created, other_client):
    path = f"/v1/deployments/{created.owner}/{created.name}"
    assert_problem(other_client.get(path), 404, "not found")
    assert_problem(other_client.post(f"{path}/predictions", json={"input": INPUT}), 404, "not found")
    assert created.name not in [d["name"] for d in other_client.get("/v1/deployments").json()["results"]]
    other = replicate.Client(api_token=TOKEN_B, base_url=stack.base_url)
    with pytest.raises(replicate.exceptions.ReplicateError):
        other.deployments.delete(created.owner, created.name)


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"hardware": "tpu"}, 422, "hardware"),
        ({"version": "0" * 64}, 422, "version"),
        ({"min_instances": 5, "max_instances": 4}, 422, "max_instances"),
        ({"name": "Bad Name"}, 422, "name"),
        ({"model": "kiln/nope"}, 422, "model"),
    ],
)
def test_bad_deployments_are_refused_naming_the_field(client, change, status, fragment):
    version = client.get(f"/v1/models/{MODEL}").json()["latest_version"]["id"]
    body = {
        "name": "bad",
        "model": MODEL,
        "version": version,
        "hardware": "gpu",
        "min_instances": 0,
        "max_instances": 1,
    }
    assert_problem(client.post("/v1/deployments", json=body | change), status, fragment)


def test_a_duplicate_and_a_deleted_deployment(client, created):
    body = {
        "name": created.name,
        "model": MODEL,
        "version": created.current_release.version,
        "hardware": "gpu",
        "min_instances": 0,
        "max_instances": 1,
    }
    assert_problem(client.post("/v1/deployments", json=body), 409, "already exists")
    path = f"/v1/deployments/{created.owner}/{created.name}"
    assert_problem(client.patch(path, json={}), 422, "at least one")
    assert client.delete(path).status_code == 204
    assert_problem(client.get(path), 404, "not found")
    # The fixture's own delete finds it gone: recreate it for the teardown.
    assert client.post("/v1/deployments", json=body).status_code == 201
