"""A prediction as Redis stores it (``Prediction.to_compact_hash``): each field JSON-encoded, those at their
defaults left out (``status`` always in), and read back as the same prediction."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from shared.predictions.record import Prediction, utcnow
from shared.predictions.status import Status

PLAIN = Prediction(tenant="t", model="kiln/sd2-depth2img", version="v1", input={"prompt": "a kiln"})
FULL = Prediction(
    tenant="t",
    model="kiln/ip-adapter-depth-xl",
    version="v2",
    queue="sdxl",
    input={"prompt": "a fox", "seed": 7, "input_image": "data:image/png;base64,AAAA"},
    input_files={"https://x.test/a.png": "inputs/a"},
    output=["out-0.png"],
    logs="step 1\n",
    status=Status.SUCCEEDED,
    started_at=utcnow(),
    completed_at=utcnow() + timedelta(seconds=2),
    predict_time=1.5,
    deadline=utcnow() + timedelta(hours=1),
    retention_s=600,
    attempt=2,
    webhook="https://hooks.test/k",
    webhook_events_filter=["completed"],
    base_url="http://kiln.test",
    batch_id="b1",
    priority="low",
    queue_line=1,
    queue_ticket=42,
)


@pytest.mark.parametrize("prediction", [PLAIN, FULL], ids=["defaults", "every field set"])
def test_the_compact_hash_holds_the_fields_off_their_defaults_and_reads_back_whole(prediction: Prediction) -> None:
    stored = prediction.to_compact_hash()
    dumped = prediction.model_dump(mode="json", exclude={"logs"}, exclude_defaults=True)
    dumped["status"] = prediction.status.value
    expected = {name: orjson.dumps(value) for name, value in dumped.items() if value is not None}
    assert stored == expected
    assert {"id", "created_at", "status"} <= set(stored) and "logs" not in stored
    read = Prediction.from_redis_hash({name: value.decode() for name, value in stored.items()}, prediction.logs)
    assert read == prediction
