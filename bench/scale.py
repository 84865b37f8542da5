"""Scale rehearsal of the shard-building job: thousands of short videos on one machine.

    python bench/scale.py [--videos 1000 2000] [--out bench/results/scale.json]

For each count N it writes N short synthetic videos (``pipeline.media_kit``): most are 1 s long and
cut by the cheap checks (their only clip is shorter than ``clips.min_len_s``), one in 500 is a
2.6 s talking-face clip that is kept, and one in 100 is broken (empty, truncated, random bytes).
The identity pass (face embeddings of every video before the chunks run, stage work of its own)
is off (``identity.backend=none``): this bench measures what the job adds per video.
Then, each as the command a user types, in a fresh process:

* the job (``pipeline/build_shards.py``, one CPU actor and one model actor on a local Ray of 2
  CPUs, random weights): the driver's peak resident memory and CPU time (``run.json``'s
  ``driver``), the job's time per video beyond the stages' own work (planning plus the
  scheduler's loop, less the CPU stages' seconds, over N: Ray's calls, the driver's loop, chunk
  writing and whatever waits), the time to merge the manifests and statistics at the end
  (``timings.finalize_s``);
* the audit (``python -m manifests.audit OUT --json``): its wall time;
* a resume of the finished output (the same command again): its wall time.

Goals: driver peak memory flat (twice the smallest N within 20% of it), at most 50 ms per video
beyond the stages' work, a resume of a finished output within 10 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.media_kit import make_broken_inputs, make_clip  # noqa: E402
from pipeline.stages import GROUPS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "scale.json"
SETTINGS = ("clips.min_len_s=2", "clips.max_len_s=3", "clips.cut_margin_s=0.1", "decode.max_side=480",
            "faces.backend=haar", "filters.faces.min_face_px=32", "filters.quality.metric=piqe",
            "filters.quality.n_frames=2", "filters.quality.threshold=60", "filters.quality.mode=score",
            "filters.sync.mode=score", "filters.head_motion.mode=score",
            "models.audio_encoder.random_config=small", "progress.enabled=false", "ray.num_cpus=2",
            "ray.cpu_workers=1", "ray.cpu_worker_cpus=1", "ray.model_workers=1", "ray.model_worker_cpus=1",
            "ray.torch_threads=1", "identity.backend=none")
BROKEN = ("zero_bytes", "truncated", "garbage")
CPU_STAGES = (*GROUPS["video"], *GROUPS["prepare"])


def make_inputs(folder: Path, n: int) -> tuple[Path, dict[str, int]]:
    """``n`` videos copied from a few templates under distinct names, listed in ``folder/inputs.txt``.
    The kept ones are spread through the first half of the list, so their model work overlaps
    the cheap checks rather than trailing them."""
    templates = folder / "templates"
    cut = make_clip(templates / "cut.mp4", size=(160, 120), duration=1.0, seed=1).path
    kept = make_clip(templates / "kept.mp4", size=(320, 240), duration=2.6, seed=2).path
    broken = make_broken_inputs(templates / "broken")
    n_kept, n_broken = max(1, n // 500), max(1, n // 100)
    kinds = ["cut"] * n
    for i in range(n_kept):
        kinds[i * n // (2 * n_kept)] = "kept"
    for i in range(n_broken):
        at = (i * n // n_broken + n // (2 * n_broken)) % n
        while kinds[at] != "cut":
            at = (at + 1) % n
        kinds[at] = BROKEN[i % len(BROKEN)]
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    names = []
    for i, kind in enumerate(kinds):
        source = {"cut": cut, "kept": kept}.get(kind) or broken[kind]
        dst = videos / f"v{i:05d}_{kind}.mp4"
        shutil.copyfile(source, dst)
        names.append(str(dst))
    listing = folder / "inputs.txt"
    listing.write_text("\n".join(names) + "\n")
    return listing, {"kept_videos": n_kept, "broken_videos": n_broken, "cut_videos": n - n_kept - n_broken}


def timed(argv: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    with log.open("wb") as sink:
        code = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    if code not in ok:
        raise SystemExit(f"{' '.join(argv[:4])} exited {code}:\n" + log.read_text(errors="replace")[-3000:])
    return wall


def one_count(work: Path, n: int) -> dict:
    folder = work / f"n{n}"
    listing, kinds = make_inputs(folder, n)
    out = folder / "out"
    job = [sys.executable, "pipeline/build_shards.py", "--input", str(listing), "--output", str(out),
           "--random-weights", *SETTINGS]
    wall = timed(job, folder / "job.log")
    run = json.loads((out / "run.json").read_text())
    t = run["timings"]
    cpu_stage_s = sum(t["stage_seconds"].get(s, 0.0) for s in CPU_STAGES)
    loop_s = t["planning_s"] + t["processing_s"]
    audit_s = timed([sys.executable, "-m", "manifests.audit", str(out), "--json"], folder / "audit.log", ok=(0, 1))
    resume_s = timed(job, folder / "resume.log")
    resumed = "nothing to do" in (folder / "resume.log").read_text(errors="replace")
    result = {
        "videos": n, **kinds, "job_wall_s": round(wall, 2),
        "counts": {k: run["counts"][k] for k in ("chunks", "videos", "videos_failed", "clips", "kept", "rejected")},
        "clip_rejections": run["counts"]["clip_rejections"], "video_failures": run["counts"]["video_failures"],
        "driver_peak_rss_mb": run["driver"]["peak_rss_mb"], "driver_cpu_s": run["driver"]["cpu_s"],
        "driver_cpu_ms_per_video": round(1000 * run["driver"]["cpu_s"] / n, 2),
        "planning_s": round(t["planning_s"], 2), "startup_s": round(t["startup_s"], 2),
        "processing_s": round(t["processing_s"], 2), "finalize_s": round(t["finalize_s"], 3),
        "cpu_stage_s": round(cpu_stage_s, 2), "stage_seconds": t["stage_seconds"],
        "overhead_ms_per_video": round(1000 * (loop_s - cpu_stage_s) / n, 2),
        "audit_s": round(audit_s, 2), "resume_s": round(resume_s, 2), "resume_did_nothing": resumed,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    parser.add_argument("--logs", type=Path, default=None, help="copy each command's log into this folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        runs = [one_count(work, n) for n in args.videos]
    finally:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("n*/*.log"):
                shutil.copyfile(log, args.logs / f"{log.parent.name}_{log.name}")
        if args.keep:
            print("work folder:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    small = runs[0]
    doubled = next((r for r in runs if r["videos"] == 2 * small["videos"]), runs[-1])
    result = {
        "bench": "scale", "machine": platform.platform(), "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(), "settings": list(SETTINGS), "runs": runs,
        "goals": {
            "driver_memory_ratio_by_videos": {r["videos"]: round(r["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3)
                                              for r in runs},
            "driver_memory_flat": doubled["driver_peak_rss_mb"] <= 1.2 * small["driver_peak_rss_mb"],
            "overhead_ms_per_video_max": max(r["overhead_ms_per_video"] for r in runs),
            "overhead_within_50_ms": all(r["overhead_ms_per_video"] <= 50 for r in runs),
            "resume_s_max": max(r["resume_s"] for r in runs),
            "resume_within_10_s": all(r["resume_s"] <= 10 for r in runs),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["goals"], indent=2))


if __name__ == "__main__":
    main()
