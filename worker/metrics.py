"""A worker's Prometheus exporter: what it recorded (``shared.metrics``) plus GPU memory on CUDA.

Each Celery worker is one process (solo pool on a GPU, threads for webhooks), so a plain
``prometheus_client`` HTTP server in that process sees every sample; no multiprocess mode needed.
It starts once the worker is ready (models loaded), so an answer on the port also means "serving".
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)


class GpuMemoryCollector:
    """torch's CUDA allocator counters per device, when this process uses CUDA; nothing otherwise.

    Never imports torch itself: a worker without CUDA work (webhooks, CPU) reports no GPU series.
    """

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily("kiln_gpu_memory_allocated_bytes",
                                      "GPU memory held by tensors of this worker.", labels=["device"])
        reserved = GaugeMetricFamily("kiln_gpu_memory_reserved_bytes",
                                     "GPU memory reserved by this worker's caching allocator.", labels=["device"])
        peak = GaugeMetricFamily("kiln_gpu_memory_max_allocated_bytes",
                                 "Peak GPU memory held by tensors since the worker started.", labels=["device"])
        total = GaugeMetricFamily("kiln_gpu_memory_total_bytes", "The device's memory.", labels=["device"])
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            allocated.add_metric([device], torch.cuda.memory_allocated(index))
            reserved.add_metric([device], torch.cuda.memory_reserved(index))
            peak.add_metric([device], torch.cuda.max_memory_allocated(index))
            total.add_metric([device], torch.cuda.get_device_properties(index).total_memory)
        yield from (allocated, reserved, peak, total)


_started: list[int] = []


def start_exporter(port: int, host: str = "0.0.0.0") -> bool:
    """Serve this process's metrics on ``host:port``, once per process. False when off (port 0)."""
    if port == 0 or _started:
        return bool(_started)
    start_http_server(port, addr=host)
    REGISTRY.register(GpuMemoryCollector())
    _started.append(port)
    log.info("worker metrics on port %d", port)
    return True
