#!/usr/bin/env bash
# Creates .venv and installs bertctl with everything it needs; safe to run again (it skips
# the install when pyproject.toml has not changed since the last successful one).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.bertctl-installed
WANT=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check"
$PIP install -q --upgrade pip
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[train,test]"
# DeepSpeed compiles against the installed torch, so it must not get an isolated build env.
$PIP install -q --no-build-isolation "deepspeed==0.19.8"
# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download cannot
# work offline); installed here so that the test command needs nothing else.
if ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "$WANT" > "$STAMP"
