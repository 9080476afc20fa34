"""Profile the API's create paths in-process (pyinstrument): ``python -m tools.profile_create``.

Runs ``submit`` (single creates) and ``submit_batch`` against a private redis-server, without HTTP,
and prints where the time goes. Object storage is not touched (data-URI inputs).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pyinstrument import Profiler

from api.intake.inline_batch import submit_batch
from api.intake.submission import submit
from api.schemas import CreatePrediction
from api.services import Services
from deploy.devstack.servers import RedisServer
from models.registry import find_model
from shared.settings import Settings
from tools.bench import SD2_INPUT


def main() -> int:
    with RedisServer(Path(tempfile.mkdtemp(prefix="kiln-profile-"))) as redis_server:
        settings = Settings(
            _env_file=None,
            redis_url=redis_server.url,
            api_token="t",
            max_queued_per_tenant=10**8,
            max_queued_total=10**8,
        )
        services = Services.connect(settings)
        spec = find_model("kiln/sd2-depth2img")
        body = CreatePrediction(version="kiln/sd2-depth2img", input=SD2_INPUT)
        items = [{"version": "kiln/sd2-depth2img", "input": SD2_INPUT}] * 1000
        submit_batch(services, "t", items, "http://x", None)  # warm-up
        for name, run, count in (
            ("single", lambda: submit(services, "t", spec, body, "http://x"), 2000),
            ("batch", lambda: submit_batch(services, "t", items, "http://x", None), 10),
        ):
            profiler = Profiler(interval=0.0005)
            started = time.perf_counter()
            with profiler:
                for _ in range(count):
                    run()
            elapsed = time.perf_counter() - started
            per_s = count * (1000 if name == "batch" else 1) / elapsed
            print(f"== {name}: {per_s:,.0f} predictions/s in-process (profiled)", flush=True)
            print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
