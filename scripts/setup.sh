#!/usr/bin/env bash
# Create (or reuse) the virtual environment at .venv with the exact pinned
# dependencies and an editable install of this package. Re-installs only when the
# requirement files or the build files change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.espnet_imlspike_stamp
want=$(cat requirements.txt requirements-test.txt setup.cfg setup.py pyproject.toml \
  espnet_imlspike.pth | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
echo "Setting up .venv (first time: about 3-5 minutes, ~5 GB: torch, torchaudio, espnet)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "$want" > "$stamp"
