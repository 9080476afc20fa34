#!/usr/bin/env bash
# The GPU truth kit on the GPU host (offline), from the repository root, with .gpu-kit/ carried along:
#   bash tools/gpu_kit/run.sh [kit options, e.g. --models kiln/sd2-depth2img]
# Installs the kit's wheels into a temporary site directory (no network), then runs the kit within
# BUDGET_S seconds (default 420), writing $OUT/gpu-truth.json and $OUT/gpu-truth.md as it goes.
set -uo pipefail
cd "$(dirname "$0")/../../.."
KIT_DIR=${KIT_DIR:-.gpu-kit}
BUDGET_S=${BUDGET_S:-420}
OUT=${OUT:-$PWD/gpu-kit-out}
SITE=$(mktemp -d /tmp/kiln-gpu-kit-site.XXXXXX)
PYTHON=${PYTHON:-python3}
if ! compgen -G "$KIT_DIR/*.whl" >/dev/null; then
    echo "no wheels in $KIT_DIR/: run 'make gpu-kit' first and carry $KIT_DIR along" >&2
    exit 2
fi
"$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$KIT_DIR"/*.whl || exit 3
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv" 2>&1 || true
# The kit keeps to its budget; the timeout only catches a measurement that hangs.
timeout -k 15 $((BUDGET_S + 90)) "$PYTHON" -m tools.gpu_kit --out "$OUT" --budget-s "$BUDGET_S" "$@" 2>&1 \
    | tee "$OUT/gpu-kit.log"
status=${PIPESTATUS[0]}
rm -rf "$SITE"
exit "$status"
