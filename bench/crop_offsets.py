"""How far the detector-box LivePortrait crop is from the landmark crop, on the real sample clips.

    python bench/crop_offsets.py [--frames 100]

Each clip is decoded as the face stage decodes it (25 fps, longer side at most 720), tracked with
the Haar cascade, and cropped both ways: the old rule (2.2 x the detector box, moved up by 0.1 x
the side) and LivePortrait's (dlib's 68 landmarks, ``shards.crop``). Writes
``bench/results/crop_offsets.json``: centre offset as a fraction of the landmark crop's side, and
the side ratio detector / landmark.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

from pipeline.decode import iter_video_chunks  # noqa: E402
from pipeline.faces import FaceTracker, liveportrait_box  # noqa: E402
from pipeline.media import media_dir  # noqa: E402
from pipeline.probe import probe  # noqa: E402
from pipeline.stages.faces import working_size  # noqa: E402

CLIPS = ("lp_d20.mp4", "lp_d14.mp4", "lp_s13.mp4", "carphone.mp4")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args(argv)
    tracker = FaceTracker(backend="haar", min_face=0, landmarks="dlib")
    rows = []
    for name in CLIPS:
        source = str(media_dir() / name)
        info = probe(source)
        size = working_size(info.width, info.height, info.rotation, 720)
        end = min(info.duration_s, args.frames / 25)
        frames = np.concatenate(list(iter_video_chunks(source, 0.0, end, size=size)))
        track = tracker.track(frames)
        landmark = liveportrait_box(track)
        detector = liveportrait_box(dataclasses.replace(track, crop_box=np.full(4, np.nan)))
        side = landmark[2] - landmark[0]
        offset = (detector[:2] + detector[2:]) / 2 - (landmark[:2] + landmark[2:]) / 2
        rows.append({"clip": name, "frames": len(frames), "size": list(size),
                     "landmarked_frames": track.landmarked_frames,
                     "landmark_side_px": round(float(side), 1),
                     "centre_offset_x": round(float(offset[0] / side), 4),
                     "centre_offset_y": round(float(offset[1] / side), 4),
                     "centre_offset": round(float(np.hypot(*offset) / side), 4),
                     "side_ratio": round(float((detector[2] - detector[0]) / side), 4)})
        print(rows[-1])
    out = Path(__file__).resolve().parent / "results" / "crop_offsets.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"settings": {"frames": args.frames, "detector": "haar", "landmarks": "dlib68",
                                            "max_side": 720, "landmark_every_samples": 2},
                               "clips": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
