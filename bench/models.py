"""Throughput of the model components on this machine: motion extractor (batch 1 vs batched),
SyncNet, both on one thread in PyTorch eager and ONNX Runtime (CPU), and the offline (Haar) face
backend, with random weights of the official architectures.

    python bench/models.py [--frames 16] [--threads 2] [--device cpu] [--out FILE]

Writes bench/results/models.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.syncnet import sync_scores
from models.syncnet import WINDOW_FRAMES, load_syncnet
from shards.format import SAMPLES_PER_FRAME
from pipeline.media import media_available, media_dir
from models.liveportrait.motion_extractor import extract, load_motion_extractor

RESULTS = ROOT / "bench" / "results" / "models.json"


REPEATS = 2


def timed(fn, repeats: int = REPEATS) -> float:
    """Best wall time of ``repeats`` runs (the machine is shared; the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def row(model: str, batch: int, frames: int, seconds: float, note: str = "") -> dict:
    return {"model": model, "batch": batch, "frames": frames, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 2), "note": note}


def bench_motion_extractor(n_frames: int, device: str) -> list[dict]:
    model = load_motion_extractor("random", device=device)
    crops = np.random.default_rng(0).integers(0, 256, (n_frames, 256, 256, 3), dtype=np.uint8)
    extract(model, crops[:1], batch_size=1)  # warm-up
    rows = []
    on_gpu = device.startswith("cuda")
    for batch in (1, 32, 64) if on_gpu else (1, 8, 16):
        seconds = timed(lambda b=batch: extract(model, crops, batch_size=b))
        rows.append(row("liveportrait motion extractor (256 px)", batch, n_frames, seconds,
                        "fp16 autocast" if on_gpu else ""))
    if on_gpu:
        seconds = timed(lambda: extract(model, crops, batch_size=1, amp_dtype=None))
        rows.append(row("liveportrait motion extractor (256 px)", 1, n_frames, seconds, "fp32"))
    return rows


def bench_syncnet(n_frames: int, device: str) -> list[dict]:
    model = load_syncnet("random", device=device)
    total = n_frames + WINDOW_FRAMES
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (total, 224, 224, 3), dtype=np.uint8)
    audio = (rng.normal(size=total * SAMPLES_PER_FRAME) * 0.1).astype(np.float32)
    sync_scores(model, crops[:WINDOW_FRAMES + 1], audio[:(WINDOW_FRAMES + 1) * SAMPLES_PER_FRAME])  # warm-up
    rows = []
    for stride in (1, 2):
        seconds = timed(lambda k=stride: sync_scores(model, crops, audio, batch_size=16, window_stride=k))
        rows.append(row(f"syncnet (224 px, 5-frame windows + MFCC), window stride {stride}", min(16, n_frames),
                        n_frames, seconds, "frames = frames scored, including MFCC and scoring"))
    return rows


def bench_cpu_runtimes(n_frames: int) -> list[dict]:
    """The extractor and SyncNet on one thread, PyTorch eager against ONNX Runtime (the pipeline's
    CPU default, ``models.onnx_cpu``), as one single-threaded model worker runs them."""
    from models.syncnet import SyncNetOnnxCpu
    from models.liveportrait.motion_extractor import on_onnx_cpu

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        crops = rng.integers(0, 256, (n_frames, 256, 256, 3), dtype=np.uint8)
        extractor = load_motion_extractor("random")
        total = n_frames + WINDOW_FRAMES
        face_crops = rng.integers(0, 256, (total, 224, 224, 3), dtype=np.uint8)
        audio = (rng.normal(size=total * SAMPLES_PER_FRAME) * 0.1).astype(np.float32)
        syncnet = load_syncnet("random")
        rows = []
        for runtime, motion, sync in (("eager", extractor, syncnet),
                                      ("onnxruntime", on_onnx_cpu(extractor), SyncNetOnnxCpu(syncnet))):
            extract(motion, crops[:4], batch_size=4)  # warm-up
            seconds = timed(lambda m=motion: extract(m, crops, batch_size=4))
            rows.append(row(f"liveportrait motion extractor, 1 thread, {runtime}", 4, n_frames, seconds))
            sync_scores(sync, face_crops[:WINDOW_FRAMES + 1], audio[:(WINDOW_FRAMES + 1) * SAMPLES_PER_FRAME])
            seconds = timed(lambda m=sync: sync_scores(m, face_crops, audio, batch_size=16))
            rows.append(row(f"syncnet, window stride 1, 1 thread, {runtime}", min(16, n_frames), n_frames, seconds))
        return rows
    finally:
        torch.set_num_threads(threads)


def bench_faces(n_frames: int) -> tuple[list[dict], str | None]:
    try:
        from pipeline.faces import FaceTracker
    except ImportError as e:
        return [], f"pipeline.faces not available ({e})"
    if not media_available():
        return [], f"real media not found at {media_dir()}"
    import cv2

    cap = cv2.VideoCapture(str(media_dir() / "lp_d20.mp4"))
    frames = []
    while len(frames) < max(n_frames, 25):
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    video = np.stack(frames)
    tracker = FaceTracker(backend="haar")
    tracker.track(video[:2])  # warm-up
    result = None

    def run():
        nonlocal result
        result = tracker.track(video)

    seconds = timed(run)
    note = f"lp_d20.mp4 {video.shape[2]}x{video.shape[1]}, ok={getattr(result, 'ok', None)}"
    return [row("haar face tracker", 1, len(video), seconds, note)], None


def markdown(rows: list[dict]) -> str:
    lines = ["| model | batch | frames | seconds | frames/s |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['batch']} | {r['frames']} | {r['seconds']:.2f} | {r['frames_per_s']:.2f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="frames per batched measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    rows = bench_motion_extractor(args.frames, args.device)
    rows += bench_syncnet(args.frames, args.device)
    if args.device == "cpu":
        rows += bench_cpu_runtimes(args.frames)
    face_rows, face_skip = bench_faces(args.frames * 4)
    rows += face_rows
    report = {
        "bench": "models",
        "device": args.device,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "weights": "random (official architectures; speed does not depend on the values)",
        "timing": f"best of {REPEATS} runs after a warm-up",
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
        "skipped": {"haar face tracker": face_skip} if face_skip else {},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    if face_skip:
        print(f"\nskipped haar face tracker: {face_skip}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
