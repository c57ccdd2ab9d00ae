#!/usr/bin/env bash
# Sets up everything on a fresh machine: libseccomp and chromium, a venv, the package with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq libseccomp2) >/dev/null || echo "warning: could not install libseccomp2; the sandbox will run without seccomp" >&2
  else
    echo "warning: libseccomp2 is missing; install it for the sandbox's seccomp layer" >&2
  fi
fi
# The browser tests drive Debian's chromium (Playwright cannot download its own browser builds here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
  else
    echo "warning: chromium is missing (apt-get install chromium); tests/test_browser.py needs it" >&2
  fi
fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
