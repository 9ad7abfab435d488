#!/usr/bin/env bash
# The browser for the UI tests (tests/browser): Debian's chromium, driven by the Python package playwright (in the
# test extra; its own browser download is not used). Quick and does nothing when Chromium is already there.
#   bash scripts/setup_browser.sh          # scripts/setup.sh --test calls it
set -euo pipefail
if [ "${LAB_SKIP_BROWSER:-}" = 1 ]; then exit 0; fi   # the browser tests are switched off
chromium=${LAB_CHROMIUM:-/usr/bin/chromium}
if [ -x "$chromium" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
if ! command -v apt-get >/dev/null; then
  echo "[setup_browser] no $chromium and no apt-get: install Chromium and set LAB_CHROMIUM=/path/to/it," \
       "or skip the browser tests with LAB_SKIP_BROWSER=1" >&2
  exit 1
fi
echo "[setup_browser] installing chromium with apt-get (about 35 s)"
if ! $SUDO apt-get install -y -q chromium >/dev/null; then
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q chromium >/dev/null
fi
echo "[setup_browser] $("$chromium" --version 2>/dev/null)"
