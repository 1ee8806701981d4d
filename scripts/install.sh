#!/usr/bin/env bash
# Install evalsuite into ./.venv on a CPU-only machine (what CI and a fresh laptop use).
#
#   scripts/install.sh                 # core + dev, ocr, train, nlp, server extras (+ mmdet, see below)
#   EXTRAS=dev,ocr scripts/install.sh  # a smaller set
#
# GPU users can instead `pip install -e ".[ocr]"` into their own environment; the two CPU-only
# steps below (torch pin, torchvision shim) are not needed there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
MMCV_WHEEL=${MMCV_WHEEL:-$(ls ../shared/wheels/mmcv-2.1.0-*.whl 2>/dev/null | head -n 1 || true)}
# The official GenEval detector (mmdet) comes by default only where a prebuilt mmcv wheel is at hand:
# PyPI has mmcv only as a source build of 20+ minutes.
DEFAULT_EXTRAS=dev,ocr,train,nlp,server
[ -n "$MMCV_WHEEL" ] && DEFAULT_EXTRAS=$DEFAULT_EXTRAS,mmdet
EXTRAS=${EXTRAS:-$DEFAULT_EXTRAS}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

# 1. Pin the CPU torch build for every later install (see constraints-cpu.txt).
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
sed "s/^torch==.*/torch==$TORCH_VERSION/" constraints-cpu.txt > "$constraints"
"$PY" -m pip install -q -c "$constraints" "torch==$TORCH_VERSION"

# 2. mmcv needs compiled ops; PyPI has only an sdist (20+ min build). Use a prebuilt wheel when given.
if [[ ",$EXTRAS," == *",mmdet,"* && -n "$MMCV_WHEEL" ]]; then
    "$PY" -m pip install -q -c "$constraints" "$MMCV_WHEEL"
fi

# 3. The project itself with its extras.
"$PY" -m pip install -q -c "$constraints" -e ".[${EXTRAS}]"

# 4. CPU-only torch + PyPI's CUDA torchvision: register the ops torchvision expects (lazy import hook).
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)"; then
    echo "torch has CUDA: skipping the CPU torchvision shim"
else
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp scripts/cpu_compat/evalsuite_cpu_torchvision.py "$site/"
    echo "import evalsuite_cpu_torchvision; evalsuite_cpu_torchvision.install()" > "$site/evalsuite_cpu_torchvision.pth"
fi

"$PY" -m pip check >/dev/null || "$PY" -m pip check
echo "installed: $("$VENV/bin/evalsuite" --version)"
