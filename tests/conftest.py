"""What every test folder shares: the pipeline fixtures (registered once here), and one torch thread per
test process when the suite runs in parallel (``-n``), so the processes do not fight over the cores."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.support.pipelines"]
