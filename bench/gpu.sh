#!/usr/bin/env bash
# The GPU figures in one prepared command: bench/gpu.py under a time limit, from the repo root.
#
#   bench/gpu.sh [bench/gpu.py arguments]     e.g. bench/gpu.sh --out bench/results/gpu.json
#
# Python: .venv/bin/python when it imports the project's dependencies (scripts/setup.sh made it).
# Otherwise (a GPU machine's image, whose python3 holds a CUDA build of PyTorch): .venv-gpu, a
# virtual environment over that python3's packages, with the project's other dependencies
# installed from the repo's pyproject.toml (torch and torchvision left as the image has them):
# from the wheels in .whl/ without any index when that folder exists (machines with no internet;
# fill it beforehand with `pip download`), else from PyPI. The whole run is limited to
# GPU_BENCH_LIMIT_S seconds (default 480); bench/gpu.py's own sections stop earlier.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_S=${GPU_BENCH_LIMIT_S:-480}
CHECK="import torch, ray, av, pyiqa, omegaconf, webdataset, scenedetect, soundfile, dlib, icecream"

if [ -x .venv/bin/python ] && .venv/bin/python -c "$CHECK" 2>/dev/null; then
  PY=.venv/bin/python
else
  PY=.venv-gpu/bin/python
  if ! { [ -x "$PY" ] && "$PY" -c "$CHECK" 2>/dev/null; }; then
    python3 -c "import torch" || { echo "gpu.sh: python3 has no PyTorch; run scripts/setup.sh instead" >&2; exit 1; }
    [ -d .venv-gpu ] || python3 -m venv --system-site-packages .venv-gpu
    python3 - >.venv-gpu/requirements.txt <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[\[=<>~ ]", d)[0] not in ("torch", "torchvision")))
EOF
    if [ -d .whl ]; then
      "$PY" -m pip install -q --no-index --find-links .whl -r .venv-gpu/requirements.txt
    else
      "$PY" -m pip install -q -r .venv-gpu/requirements.txt
    fi
    "$PY" -c "$CHECK"
  fi
fi
echo "gpu.sh: $PY ($("$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'))"
PYTHONUNBUFFERED=1 exec timeout --kill-after=20 "$LIMIT_S" "$PY" bench/gpu.py "$@"
