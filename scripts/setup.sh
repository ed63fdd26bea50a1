#!/usr/bin/env bash
# Create (or reuse) the virtual environment at .venv with the exact pinned dependencies
# and an editable install of this package, and install espeak-ng (for the demo).
# Re-installs Python packages only when the requirement or build files change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# espeak-ng synthesises the demo recipe's speech (a Debian package, not on PyPI).
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing espeak-ng (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "setup: espeak-ng is missing; install it (e.g. sudo apt-get install espeak-ng)" >&2
    exit 1
  fi
fi
stamp=.venv/.espnet_imlspike_stamp
want=$(cat requirements.txt requirements-test.txt setup.cfg setup.py pyproject.toml \
  espnet_imlspike.pth | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
echo "Setting up .venv (first time: about 3-5 minutes, ~5.6 GB: torch, torchaudio, espnet)"
if [ ! -x .venv/bin/python ]; then
  # measured: a fresh install peaks at 7.3 GB (the downloaded wheels beside the installed
  # packages, most of it torch's CUDA libraries), then 5.6 GB stay
  need_mb=7600
  free_mb=$(df -Pm . | awk 'NR == 2 {print $4}')
  if [ "$free_mb" -lt "$need_mb" ]; then
    echo "setup: only $free_mb MB free on the disk of $(pwd); installing the environment" \
      "needs about $need_mb MB there (5.6 GB once installed)" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "$want" > "$stamp"
