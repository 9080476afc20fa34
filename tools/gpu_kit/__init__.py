"""The GPU truth kit: one prepared command that measures every model on an offline GPU host.

``make gpu-kit`` packs the wheels the host lacks (``pack.py``); ``run.sh`` installs them on the host
and runs ``python -m tools.gpu_kit`` (``truth.py``), which writes ``gpu-truth.json`` and
``gpu-truth.md``. docs/benchmarks.md explains the numbers.
"""
