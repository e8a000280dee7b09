#!/usr/bin/env bash
# Install Debian's Chromium for the playground's browser tests (tests/server/test_playground.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (or sudo) and apt-get.
# The tests drive it through the `playwright` Python package; no `playwright install` download is used.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: /usr/bin/chromium"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get here: install Chromium yourself and set SEGSWAP_CHROMIUM to its path" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
echo "chromium installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
