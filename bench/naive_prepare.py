"""The naive way to prepare training data, as the public JoyVASA preparation does it: the baseline
of bench/pipeline.py, run as a command of its own so that its wall time, like the pipeline's,
counts everything a user waits for (Python's start, imports, model loading, the work).

    python bench/naive_prepare.py --spans SPANS.json --out RESULT.json [--same-models] [--device cuda]

For each video: decode it whole into memory, track and crop the face, run the motion extractor
(PyTorch eager, default threads: every core it may use) frame by frame at batch 1, then the audio
encoder; on a GPU (``--device cuda``) the extractor runs under fp16 autocast, as LivePortrait
does by default. ``--same-models`` adds the pipeline's filter models (quality on the crops, SyncNet), run
the same plain way, for a comparison at equal work. Random weights of the official architectures.
SPANS.json: ``[[source, start_s, end_s], ...]``, the clips the pipeline kept.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from filters.quality import QualityScorer  # noqa: E402
from filters.syncnet import sync_scores  # noqa: E402
from models.syncnet import load_syncnet  # noqa: E402
from models.audio_encoder import AudioEncoder  # noqa: E402
from pipeline.decode import decode_audio, iter_video_chunks  # noqa: E402
from pipeline.faces import FaceTracker, crop_liveportrait, crop_syncnet  # noqa: E402
from models.liveportrait.motion_extractor import extract, load_motion_extractor  # noqa: E402
from pipeline.probe import probe  # noqa: E402
from pipeline.stages.faces import working_size  # noqa: E402

IMPORTED = time.perf_counter()


def naive(spans: list[tuple[str, float, float]], max_side: int, same_models: bool, device: str = "cpu") -> dict:
    cores = len(psutil.Process().cpu_affinity())
    torch.set_num_threads(cores)
    cv2.setNumThreads(cores)
    loading = time.perf_counter()
    extractor = load_motion_extractor("random", device=device)
    encoder = AudioEncoder("random", device=device)
    tracker = FaceTracker("haar", min_face=0)
    syncnet = load_syncnet("random", device=device) if same_models else None
    quality = QualityScorer("piqe", n_frames=8, device=device) if same_models else None
    load_s = time.perf_counter() - loading
    start = time.perf_counter()
    frames_done, video_s = 0, 0.0
    for source in sorted({s for s, _, _ in spans}):
        info = probe(source)
        size = working_size(info.width, info.height, info.rotation, max_side)
        whole = np.concatenate(list(iter_video_chunks(source, 0.0, info.duration_s, size=size)))
        audio = decode_audio(source, 0.0, info.duration_s)
        for _, a, b in (s for s in spans if s[0] == source):
            first, last = round(a * 25), round(a * 25) + round((b - a) * 25)
            frames = whole[first:last]
            track = tracker.track(frames)
            crops = crop_liveportrait(frames, track)
            clip_audio = audio[first * 640:last * 640]
            if same_models:
                quality.score(crops)
                sync_scores(syncnet, crop_syncnet(frames, track), clip_audio)
            for crop in crops:
                extract(extractor, crop[None], batch_size=1)
            encoder.encode(clip_audio, len(frames))
            frames_done += len(frames)
            video_s += b - a
    wall = time.perf_counter() - start
    return {"frames": frames_done, "video_s": round(video_s, 2), "import_s": round(IMPORTED - START, 2),
            "load_s": round(load_s, 2), "wall_s": round(wall, 2), "threads": torch.get_num_threads(),
            "device": device, "video_s_per_wall_s": round(video_s / wall, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-side", type=int, default=720, help="the pipeline's decode.max_side")
    parser.add_argument("--same-models", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    spans = [tuple(s) for s in json.loads(args.spans.read_text())]
    args.out.write_text(json.dumps(naive(spans, args.max_side, args.same_models, args.device), indent=2) + "\n")


if __name__ == "__main__":
    main()
