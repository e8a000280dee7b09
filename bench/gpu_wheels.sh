#!/usr/bin/env bash
# The wheels `bench/gpu_check.sh --wheels DIR` needs on the lent GPU machine, downloaded here (it reaches no
# registry). That machine's image has PyTorch, transformers, huggingface-hub, safetensors, peft, accelerate,
# OpenCV, Pillow, NumPy, SciPy, httpx and prometheus-client (the tool library's device/KINDS.md); what segswap
# needs beyond them is below, at the versions the development machine runs, for its Python (3.12).
#
#   bench/gpu_wheels.sh [DIR] [PYTHON_VERSION]       (default .whl and 3.12; .whl is ignored by git)
#
# Then, on the GPU machine: bench/gpu_check.sh --wheels .whl   (device tool: carry [".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
python_version="${2:-3.12}"
python="${PYTHON:-.venv/bin/python}"
[[ -x "$python" ]] || python=python3
wheels=(
  diffusers==0.42.1 torchao==0.18.0
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5
  annotated-types==0.8.0 typing-extensions==4.16.0
  fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 uvicorn==0.55.0 python-multipart==0.0.34
  pybase64==1.5.1 platformdirs==4.14.9 tomli-w==1.2.0
)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
mkdir -p "$dir"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  "${platforms[@]}" -d "$dir" "${wheels[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
ls "$dir" | sed 's/^/gpu_wheels: /' >&2
du -sh "$dir" | sed 's/^/gpu_wheels: /' >&2
