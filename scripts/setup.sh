#!/usr/bin/env bash
# Create .venv and install the project with every dependency. Idempotent: a second run
# only checks a stamp file and exits in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# Debian packages the test-media kit needs (ffmpeg to write AAC/odd frame rates); skipped when present.
if ! command -v ffmpeg >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else echo "ffmpeg is missing: install it (sudo apt-get install ffmpeg)" >&2; exit 1; fi
fi

[ -d .venv ] || "$PY" -m venv .venv
stamp=.venv/.installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"; exit 0
fi
.venv/bin/pip install -q --upgrade pip
# torch and torchvision first, pinned together, so nothing later pulls a second torch build.
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q -e ".[test]"  # the test extra: local S3 and GCS servers
# scenedetect's opencv extra pulls opencv-python (GUI build); keep only the headless 4.x build.
if .venv/bin/pip show -q opencv-python >/dev/null 2>&1; then
  .venv/bin/pip uninstall -q -y opencv-python
  .venv/bin/pip install -q --force-reinstall --no-deps "opencv-python-headless>=4.9,<5"
fi
echo "$want" > "$stamp"
echo "setup: done"
