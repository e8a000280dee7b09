#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): install what is missing, then sdxl, flux2-klein and sd15 benched at full
# size with random weights (nothing downloaded): plain diffusers vs our eager path vs our fast path, the
# few-step and step-cache ablations; one JSON. Meant to end within 8 minutes on an H100/H200.
#
#   bench/gpu_check.sh [--tiny] [--wheels DIR] [--out FILE] [--budget-s S]
#
# --wheels DIR  install the wheels in DIR (no index, no dependency resolution) into a private target and use
#               them: for a machine without the registries that has torch and transformers but not diffusers.
#               Put torchao's wheel there too for the FP8 rows.
#               Without it, a machine that cannot import segswap's dependencies installs ".[diffusion,fp8]" from
#               the registries (torch first and pinned by SEGSWAP_TORCH, as scripts/install.sh does).
# --tiny        the tiny sets on the CPU: the same commands, in seconds (CI runs this).
# Python: $PYTHON, else .venv/bin/python when there is one, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

wheels=""
args=()
while (($#)); do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --tiny) args+=(--tiny); shift ;;
    --out|--budget-s) args+=("$1" "$2"); shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1  # nothing is downloaded, ever

if [[ -n "$wheels" ]]; then
  site="$(mktemp -d)/site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$python" -c "import diffusers, peft, pydantic_settings, pybase64, cv2, platformdirs, tomli_w, numba" 2>/dev/null; then
    "$python" -m pip install -q "${SEGSWAP_TORCH:-torch==2.13.0}"
    "$python" -m pip install -q -e ".[diffusion,fp8]"
  fi
fi
"$python" -c "import torch; print('gpu_check: torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')" >&2
exec "$python" -m bench.gpu_check ${args[@]+"${args[@]}"}
