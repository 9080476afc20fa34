# Kiln: `make run` starts the whole stack locally; `make test` runs the suite. Both install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kiln-installed

.PHONY: install lock run test test-fast lint clean chaos bench bench-streams bench-neighbours bench-gpu gpu-kit

# Exact versions of every dependency and tool (requirements.lock): install, CI and the images use them.
LOCK := requirements.lock

install: $(STAMP)

# Installed without its dependencies, which pyproject.toml's worker extra lists less opencv-python: its cv2
# would clash with controlnet-aux's opencv-python-headless (one cv2 module, two distributions).
NO_DEPS := 'insightface>=2.1,<3'

# pip (not uv/poetry) so torch==2.14.1 / torchvision==0.29.1 come from local wheels where present.
# PIP_CONSTRAINT (not only -c) so the build environment of the editable install is pinned too.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(LOCK) $(PY) -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=$(LOCK) $(PY) -m pip install --quiet -e '.[worker,dev]'
	PIP_CONSTRAINT=$(LOCK) $(PY) -m pip install --quiet --no-deps $(NO_DEPS)
	touch $(STAMP)

# Updates the lock on purpose: resolves pyproject.toml's ranges afresh in a scratch venv and pins the result.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[worker,dev]'
	.lock-venv/bin/python -m pip install --quiet --no-deps $(NO_DEPS)
	{ echo "# Exact versions for make install, CI and the images. Written by 'make lock'; do not edit by hand."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^kiln[ =@]'; } > $(LOCK)
	rm -rf .lock-venv build

run: install
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m deploy.devstack

# In TEST_WORKERS processes (pytest-xdist), a test file per process at a time; each process that runs
# integration tests starts its own stack on free ports. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Unit tests only: no servers, no model pipelines (seconds). `make test` runs everything.
test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests/api tests/shared tests/webhook_worker tests/docs -m "not integration" $(PYTEST_ARGS)

# Lint and format check (ruff), types (mypy: strict for api/ and shared/), then the import arrows
# (lint-imports: api, worker, webhook_worker -> models -> shared; [tool.importlinter] in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf .kiln .pytest_cache

# Submits many tiny predictions while killing the GPU worker and restarting Redis; prints one line.
chaos: install
	HF_HUB_OFFLINE=1 $(PY) -m tools.chaos $(CHAOS_ARGS)

# Create throughput (single, batch) and submit->start / completed->webhook latencies; prints a table.
bench: install
	HF_HUB_OFFLINE=1 $(PY) -m tools.bench $(BENCH_ARGS)

# One tenant holds many SSE streams while another waits on creates and reads: latencies, 5xx, Redis clients.
bench-streams: install
	HF_HUB_OFFLINE=1 $(PY) -m tools.bench_streams $(BENCH_STREAMS_ARGS)

# Another tenant's GET latencies while one tenant trickles image URLs, uploads or downloads 100 MB files, or floods creates.
bench-neighbours: install
	HF_HUB_OFFLINE=1 $(PY) -m tools.bench_neighbours $(BENCH_NEIGHBOURS_ARGS)

# Per-image time (batch 1 and best batch), images/min, GPU idle share between jobs, peak memory per model.
# On CUDA use KILN_WEIGHTS_PROFILE=random-full (or full); on a CPU it runs on the tiny profile (not GPU numbers).
bench-gpu: install
	HF_HUB_OFFLINE=1 $(PY) -m tools.gpu_kit --out gpu-kit-out $(BENCH_GPU_ARGS)

# Packs the GPU truth kit for an offline GPU host: the wheels it lacks into .gpu-kit/, and the command to run there.
gpu-kit: install
	$(PY) -m tools.gpu_kit.pack $(GPU_KIT_ARGS)
