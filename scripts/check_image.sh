#!/usr/bin/env bash
# Build the Docker image and its smoke stage (scripts/smoke_image.py: serve, wait for /health/ready, swap the
# example, check the PNG) without a Docker daemon or a registry: podman with chroot isolation, on a Debian base
# made here with debootstrap and kept under its name. The composite-only install (no torch) by default: the
# CUDA base and the diffusion install stay the Dockerfile's defaults, for real builds.
#
#   scripts/check_image.sh          as root, with podman and debootstrap (apt-get install podman debootstrap)
#
# Environment: SEGSWAP_IMAGE_BASE (base image name, default segswap-debian-base; made when missing),
# SEGSWAP_IMAGE_SUITE (Debian suite of that base, default bookworm), SEGSWAP_IMAGE_MIRROR (default
# http://deb.debian.org/debian), SEGSWAP_IMAGE_INSTALL (install.sh flags, default none: composite only).
# Prints the elapsed time; exits non-zero when a step or the smoke check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

base="${SEGSWAP_IMAGE_BASE:-segswap-debian-base}"
suite="${SEGSWAP_IMAGE_SUITE:-bookworm}"
mirror="${SEGSWAP_IMAGE_MIRROR:-http://deb.debian.org/debian}"
started=$SECONDS
outcome=failed
trap 'echo "check_image: $outcome after $((SECONDS - started)) s" >&2' EXIT

command -v podman >/dev/null || { echo "check_image: podman is needed (apt-get install podman)" >&2; exit 1; }

if ! podman image exists "$base"; then
  command -v debootstrap >/dev/null || { echo "check_image: debootstrap is needed to make $base" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "check_image: making $base with debootstrap needs root" >&2; exit 1; }
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"; echo "check_image: $outcome after $((SECONDS - started)) s" >&2' EXIT
  # ca-certificates goes in now: the build mounts the host's CA bundle over its file, which the package's
  # postinst could not replace then.
  debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror" >&2
  tar --numeric-owner -C "$rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$rootfs"
  echo "check_image: made $base ($suite) in $((SECONDS - started)) s" >&2
fi

# The host's CA bundle, so pip trusts what the host trusts (an intercepting proxy's CA included); only during RUN.
ca=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
podman build --isolation=chroot --network=host --format docker --pull=never "${ca[@]}" \
  --build-arg BASE="$base" --build-arg INSTALL_FLAGS="${SEGSWAP_IMAGE_INSTALL:-}" \
  --build-arg SMOKE_RUN="$(date +%s)" --target smoke -t segswap-smoke .
outcome=passed
