"""Footage to a scored talking video, end to end, at settings a laptop CPU runs in minutes.

    .venv/bin/python scripts/quickstart.py [--out out/quickstart] [--tiny]

Runs the README's commands one after another, each on what the previous one wrote: shards from
the sample clips (random weights: no weights are needed), their audit, a small training run, motion
from speech, a talking portrait, a test set from the validation split and the paper's benchmark
on it. Writes everything under ``--out`` (``data/``, ``run/``, ``motion.pkl``, ``talking.mp4``,
``testset/``, ``benchmark/results.md``) and the time each step took to ``times.json``. ``--tiny``
trains and renders less (the test suite runs it so). Sample media: ``TH_MEDIA_DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.media import ENV_VAR, media_available, media_dir  # noqa: E402

PY = ".venv/bin/python"
SPEECH = "joyvasa_006.wav"  # 10.6 s of real speech
PORTRAIT = "lp_portrait_s12.jpg"
# A small model (the test suite's size) trained briefly: enough to run every later step.
TRAIN_SETTINGS = ("model.width=64", "model.layers=2", "model.heads=4", "model.w_pre=10", "model.w_cur=40",
                  "optim.lr=2e-3", "optim.warmup_steps=20", "data.batch_size=8", "data.num_workers=1",
                  "train.progress=false")
FULL = {"steps": 100, "frames": 12, "bench_frames": 6}  # rendering is ~13 s a frame on 2 CPU cores
TINY = {"steps": 10, "frames": 2, "bench_frames": 6}  # SyncNet scores tracks of 6 frames or more


def steps(out: str, media: str, tiny: bool = False) -> list[tuple[str, str]]:
    """(name, command line) of each step, as the README shows them ($OUT and $MEDIA left as words
    when given so)."""
    size = TINY if tiny else FULL
    checkpoint = f"{out}/run/checkpoint.pt"
    return [
        ("shards", f"{PY} pipeline/build_shards.py --demo --random-weights --output {out}/data"),
        ("audit", f"{PY} -m manifests.audit {out}/data --html {out}/data/report.html"),
        ("train", f"{PY} -m training.run --shards {out}/data --out {out}/run --overwrite train.max_steps={size['steps']} "
                  f"train.val_every={size['steps']} {' '.join(TRAIN_SETTINGS)}"),
        ("sample", f"{PY} -m training.sample --checkpoint {checkpoint} --audio {media}/{SPEECH} "
                   f"--out {out}/motion.pkl --preview {out}/preview.mp4"),
        ("animate", f"{PY} -m training.animate --checkpoint {checkpoint} --image {media}/{PORTRAIT} "
                    f"--audio {media}/{SPEECH} --out {out}/talking.mp4 --max-frames {size['frames']} "
                    "--random-weights --no-progress"),
        ("test_set", f"{PY} -m training.test_set build --pipeline-out {out}/data --out {out}/testset"),
        ("benchmark", f"{PY} -m training.benchmark --checkpoint {checkpoint} --test-set {out}/testset/test_set.csv "
                      f"--out {out}/benchmark --max-frames {size['bench_frames']} --min-track {size['bench_frames']} "
                      "--iqa-metric piqe --random-weights"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/quickstart.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/quickstart")
    parser.add_argument("--tiny", action="store_true", help="train 10 steps, render 2 frames")
    args = parser.parse_args(argv)
    if not media_available():
        print(f"error: the sample media are not at {media_dir()}; set {ENV_VAR}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict[str, float] = {}
    for name, command in steps(str(out), str(media_dir()), args.tiny):
        print(f"\n=== {name}: {command}", flush=True)
        started = time.perf_counter()
        argv_ = shlex.split(command)
        argv_[0] = sys.executable  # the interpreter running this script (.venv's under make)
        done = subprocess.run(argv_, cwd=ROOT, env=env)
        times[name] = round(time.perf_counter() - started, 1)
        if done.returncode != 0:
            print(f"error: step {name} exited with status {done.returncode}", file=sys.stderr)
            return 1
    (out / "times.json").write_text(json.dumps({"tiny": args.tiny, "seconds": times,
                                                "total_s": round(sum(times.values()), 1)}, indent=1))
    print("\n" + "\n".join(f"{name:>10}  {seconds:7.1f} s" for name, seconds in times.items()))
    print(f"{'total':>10}  {sum(times.values()):7.1f} s; the talking video: {out / 'talking.mp4'}, "
          f"the benchmark: {out / 'benchmark' / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
