"""GPU memory series for a GPU worker's Prometheus exporter (``shared.runtime.metrics.start_exporter``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric


class GpuMemoryCollector:
    """torch's CUDA allocator counters per device, when this process uses CUDA; nothing otherwise.

    Never imports torch itself: a worker without CUDA work (on a CPU) reports no GPU series.
    """

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily(
            "kiln_gpu_memory_allocated_bytes", "GPU memory held by tensors of this worker.", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            "kiln_gpu_memory_reserved_bytes",
            "GPU memory reserved by this worker's caching allocator.",
            labels=["device"],
        )
        peak = GaugeMetricFamily(
            "kiln_gpu_memory_max_allocated_bytes",
            "Peak GPU memory held by tensors since the worker started.",
            labels=["device"],
        )
        total = GaugeMetricFamily("kiln_gpu_memory_total_bytes", "The device's memory.", labels=["device"])
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            allocated.add_metric([device], torch.cuda.memory_allocated(index))
            reserved.add_metric([device], torch.cuda.memory_reserved(index))
            peak.add_metric([device], torch.cuda.max_memory_allocated(index))
            total.add_metric([device], torch.cuda.get_device_properties(index).total_memory)
        yield from (allocated, reserved, peak, total)
