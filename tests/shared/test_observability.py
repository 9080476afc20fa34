"""Metrics collectors and log formatting, without servers: fakeredis, a fake torch, a captured stream."""

from __future__ import annotations

import io
import json
import logging
import sys
import types

import fakeredis
import pytest
from kombu.transport.redis import Channel
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError

from api.routes.metrics import QueueDepthCollector
from shared.db import keys
from shared.runtime.logs import PredictionIdFilter, apply_format, bound_prediction, make_formatter
from shared.scheduling import queues
from worker.metrics import GpuMemoryCollector


def collected(collector) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_priority_list_names_use_kombus_separator():
    assert Channel.sep == queues.KOMBU_PRIORITY_SEPARATOR
    assert queues.priority_lists("gpu.sdxl") == {
        0: "gpu.sdxl",
        3: "gpu.sdxl\x06\x163",
        6: "gpu.sdxl\x06\x166",
        8: "gpu.sdxl\x06\x168",
        9: "gpu.sdxl\x06\x169",
    }


def test_queue_depth_reports_every_priority_list_and_family():
    redis = fakeredis.FakeRedis()
    lists = queues.priority_lists(queues.SD2_DEPTH)
    redis.rpush(lists[0], "a")
    redis.rpush(lists[6], "b", "c", "d")
    redis.hset(keys.queued_by_family(), queues.SDXL, 2)
    samples = collected(QueueDepthCollector(redis))
    assert samples[("kiln_redis_up", ())] == 1
    assert samples[("kiln_queue_length", (("priority", "0"), ("queue", queues.SD2_DEPTH)))] == 1
    assert samples[("kiln_queue_length", (("priority", "6"), ("queue", queues.SD2_DEPTH)))] == 3
    assert samples[("kiln_queue_length", (("priority", "0"), ("queue", queues.SDXL)))] == 0
    assert samples[("kiln_queue_length", (("priority", "9"), ("queue", queues.WEBHOOKS)))] == 0
    assert samples[("kiln_queued_predictions", (("family", queues.SDXL),))] == 2
    assert samples[("kiln_queued_predictions", (("family", queues.SD2_DEPTH),))] == 0


def test_queue_depth_with_redis_down_says_so_instead_of_failing_the_scrape():
    class Down(fakeredis.FakeRedis):
        def pipeline(self, *args, **kwargs):
            raise ConnectionError("Redis is restarting")

    samples = collected(QueueDepthCollector(Down()))
    assert samples == {("kiln_redis_up", ()): 0}


def _log_to_stream(log_format: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    apply_format([handler], log_format)
    logger = logging.getLogger(f"kiln-test-{log_format}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_the_bound_prediction_id():
    logger, stream = _log_to_stream("json")
    logger.info("outside")
    with bound_prediction("p1"):
        logger.warning("running %s", "it")
        logger.info("explicit", extra={"prediction_id": "p2"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"], line["prediction_id"]) for line in lines] == [
        ("outside", None),
        ("running it", "p1"),
        ("explicit", "p2"),
    ]
    assert lines[1]["level"] == "WARNING" and lines[1]["logger"] == "kiln-test-json" and lines[1]["time"]


def test_text_lines_stay_plain_and_unknown_formats_are_refused():
    logger, stream = _log_to_stream("text")
    with bound_prediction("p1"):
        logger.info("hello")
    assert stream.getvalue().rstrip().endswith("INFO kiln-test-text: hello")
    with pytest.raises(ValueError, match="KILN_LOG_FORMAT"):
        make_formatter("yaml")


def test_prediction_id_filter_is_added_once():
    handler = logging.StreamHandler(io.StringIO())
    apply_format([handler], "json")
    apply_format([handler], "json")
    assert sum(isinstance(f, PredictionIdFilter) for f in handler.filters) == 1


def _fake_torch(initialized: bool) -> types.ModuleType:
    torch = types.ModuleType("torch")
    gib = 1024**3
    torch.cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: initialized,
        device_count=lambda: 2,
        memory_allocated=lambda i: (i + 1) * gib,
        memory_reserved=lambda i: (i + 2) * gib,
        max_memory_allocated=lambda i: (i + 3) * gib,
        get_device_properties=lambda i: types.SimpleNamespace(total_memory=80 * gib),
    )
    return torch


def test_gpu_memory_is_reported_per_device_once_cuda_is_in_use(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(initialized=True))
    samples = collected(GpuMemoryCollector())
    gib = 1024**3
    assert samples[("kiln_gpu_memory_allocated_bytes", (("device", "cuda:1"),))] == 2 * gib
    assert samples[("kiln_gpu_memory_reserved_bytes", (("device", "cuda:0"),))] == 2 * gib
    assert samples[("kiln_gpu_memory_max_allocated_bytes", (("device", "cuda:0"),))] == 3 * gib
    assert samples[("kiln_gpu_memory_total_bytes", (("device", "cuda:1"),))] == 80 * gib


def test_gpu_memory_is_absent_without_cuda_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(initialized=False))
    assert collected(GpuMemoryCollector()) == {}
    monkeypatch.delitem(sys.modules, "torch")
    assert collected(GpuMemoryCollector()) == {}
