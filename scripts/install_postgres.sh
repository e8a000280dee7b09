#!/usr/bin/env bash
# Install PostgreSQL's server binaries (Debian/Ubuntu package `postgresql`) for the tests of the shared store.
# The tests start their own throwaway server from these binaries (initdb + pg_ctl, as the `postgres` user);
# this script only installs the package, and does nothing if the binaries are already there.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "postgresql already installed: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
echo "postgresql installed: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
