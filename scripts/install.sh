#!/usr/bin/env bash
# Install segswap into a virtual environment. The README, CI and the Docker image all use this script.
#
#   scripts/install.sh              the server and CLI, composite engine only (no torch)
#   scripts/install.sh --diffusion  plus the diffusion engine (torch, diffusers, transformers)
#   scripts/install.sh --provenance plus the diffusion engine and the provenance marks (C2PA, watermark)
#   scripts/install.sh --test       plus all of that and the test tools (and, as root on
#                                   Debian, Chromium and PostgreSQL for the browser and shared-store tests)
#
# Environment: SEGSWAP_VENV (default .venv; "system" installs into the current interpreter),
# SEGSWAP_TORCH (pip requirement for torch; default torch==2.13.0, the CPU build on the
# development machines; on a CUDA server use e.g. "torch==2.13.0" from PyPI or the PyTorch index).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
case "${1:-}" in
  "") ;;
  --diffusion) extras="[diffusion]" ;;
  --provenance) extras="[diffusion,provenance]" ;;
  --test) extras="[diffusion,provenance,test]" ;;
  *) echo "usage: scripts/install.sh [--diffusion|--provenance|--test]" >&2; exit 2 ;;
esac

venv="${SEGSWAP_VENV:-.venv}"
if [ "$venv" = "system" ]; then
  python=python3
else
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  python="$venv/bin/python"
fi

"$python" -m pip install --quiet --upgrade pip
if [ -n "$extras" ]; then
  # Torch first and pinned: left to the resolver, a bare "torch" pulls a multi-GB CUDA build.
  "$python" -m pip install --quiet "${SEGSWAP_TORCH:-torch==2.13.0}"
fi
"$python" -m pip install --quiet -e ".${extras}"
if [[ "$extras" == *provenance* ]]; then
  # Without its dependencies: they name opencv-python, which would replace opencv-python-headless's cv2; what it
  # really imports (cv2, numpy, PyWavelets, torch) is installed already.
  "$python" -m pip install --quiet --no-deps "invisible-watermark==0.2.0"
fi
if [ "${1:-}" = "--test" ]; then
  if ! scripts/install_browser.sh; then
    [ "${SEGSWAP_REQUIRE_BROWSER:-}" = 1 ] && { echo "Chromium could not be installed" >&2; exit 1; }
    echo "Chromium not installed: the browser tests will be skipped" >&2
  fi
  if ! scripts/install_postgres.sh; then
    [ "${SEGSWAP_REQUIRE_POSTGRES:-}" = 1 ] && { echo "PostgreSQL could not be installed" >&2; exit 1; }
    echo "PostgreSQL not installed: the shared-store tests will be skipped" >&2
  fi
fi
"$python" examples/make_examples.py >/dev/null
echo "segswap installed in ${venv}${extras:+ with ${extras}}"
