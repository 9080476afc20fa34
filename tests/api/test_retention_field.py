"""``retention_s`` in create bodies (every body shape: single, batch item, deployment) and how the
prediction shows it; the OpenAPI entries of the DELETE endpoints. No server needed."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from pydantic import ValidationError

from api.app import create_app
from api.errors import ProblemError
from api.intake.batch_file import Template, Validated, longest_retention
from api.intake.submission import check_retention
from api.schemas import CreateInBatch, CreatePrediction, PredictionFields
from shared.predictions.client_json import render_prediction
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.security.signed_urls import UrlSigner
from shared.settings import Settings

BODY = {"version": "kiln/sd2-depth2img", "input": {"prompt": "p"}}
SERVICES = SimpleNamespace(settings=Settings(_env_file=None, api_token="a", retention_s=3600))


@pytest.mark.parametrize("schema", [CreatePrediction, CreateInBatch, PredictionFields])
@pytest.mark.parametrize("value", [0, 1, 3600])
def test_every_create_body_takes_a_whole_number_of_seconds(schema, value):
    assert schema.model_validate(BODY | {"retention_s": value}).retention_s == value


@pytest.mark.parametrize("value", [-1, 1.5, True, "60", [60]])
def test_anything_but_a_non_negative_integer_is_refused_naming_the_field(value):
    with pytest.raises(ValidationError) as refused:
        CreatePrediction.model_validate(BODY | {"retention_s": value})
    assert [error["loc"] for error in refused.value.errors()] == [("retention_s",)]


def test_without_it_the_global_retention_applies():
    assert CreatePrediction.model_validate(BODY).retention_s is None
    assert check_retention(None, SERVICES) is None


def test_up_to_kiln_retention_s_is_taken_and_more_is_a_422_naming_the_field_and_the_maximum():
    assert check_retention(3600, SERVICES) == 3600
    with pytest.raises(ProblemError) as refused:
        check_retention(3601, SERVICES)
    assert refused.value.status == 422
    assert refused.value.detail.startswith("retention_s: 3601")
    assert "3600 seconds (KILN_RETENTION_S)" in refused.value.detail


def prediction(**fields: object) -> Prediction:
    return Prediction(
        tenant="t",
        model="kiln/sd2-depth2img",
        version="v",
        input={},
        output=["out-0.png"],
        status=Status.SUCCEEDED,
        completed_at=datetime(2030, 1, 1, tzinfo=UTC),
        **fields,
    )


def output_expires(rendered: dict) -> int:
    return int(parse_qs(urlsplit(rendered["output"][0]).query)["expires"][0])


def test_the_prediction_shows_its_own_retention_and_its_urls_never_outlive_its_data():
    signer = UrlSigner("s", ttl_s=10**9)
    completed = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    default = render_prediction(prediction(), "http://k", signer, 3600)
    assert "retention_s" not in default and output_expires(default) == completed + 3600
    short = render_prediction(prediction(retention_s=60), "http://k", signer, 3600)
    assert short["retention_s"] == 60 and output_expires(short) == completed + 60
    # Kept 0 s: its data goes once its completed webhook was attempted; the URLs that webhook carries work until then.
    zero = render_prediction(prediction(retention_s=0), "http://k", signer, 3600)
    assert zero["retention_s"] == 0 and output_expires(zero) == completed + 3600


def template(**fields: object) -> Template:
    return Template("gpu.sd2", "kiln/sd2-depth2img", {name: orjson.dumps(v) for name, v in fields.items()})


@pytest.mark.parametrize(
    ("templates", "kept_s"),
    [
        ([], None),
        ([template(retention_s=0), template(retention_s=30)], 30),
        # One item keeps its data for KILN_RETENTION_S: so do the inputs it shares.
        ([template(retention_s=0), template()], None),
    ],
)
def test_a_batchs_shared_inputs_are_kept_as_long_as_its_longest_kept_item(templates, kept_s):
    assert longest_retention(Validated(entries=list(range(len(templates))), templates=templates)) == kept_s


def test_the_delete_endpoints_document_200_404_and_409_with_descriptions():
    document = create_app(Settings(_env_file=None, api_token="a")).openapi()
    for path in ("/v1/predictions/{prediction_id}", "/v1/batches/{batch_id}"):
        responses = document["paths"][path]["delete"]["responses"]
        assert {"200", "404", "409"} <= set(responses)
        assert "data_removed" in responses["200"]["description"]
        assert "cancel it first" in responses["409"]["description"]
        assert responses["404"]["description"] != "Not Found"
        assert "application/problem+json" in responses["409"]["content"]
    answered = document["paths"]["/v1/predictions/{prediction_id}"]["delete"]["responses"]["200"]
    assert answered["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Prediction"}
    assert document["components"]["schemas"]["Prediction"]["properties"]["retention_s"]["minimum"] == 0
