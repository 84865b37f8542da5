"""Frame FID between generated and ground-truth frames, computed by pyiqa's ``fid`` metric.

pyiqa's FID reads folders of images (clean-fid's "clean" mode: PIL bicubic resize to 299, the
TF FID Inception's 2048-d pool features, the Frechet distance of their Gaussians), so the frames
are written losslessly as PNG into temporary folders. ``every``: one frame in ``every``, since
neighbouring frames of a video are nearly the same image. With fewer frames than feature
dimensions (2048) the covariances are singular and pyiqa regularises them (its ``eps``): the
frame counts are in the result so a reader can judge the estimate.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

MIN_FRAMES = 2  # a covariance needs two samples


def write_frames(videos: list[np.ndarray], folder: Path, every: int) -> int:
    count = 0
    for v, frames in enumerate(videos):
        for i in range(0, len(frames), every):
            cv2.imwrite(str(folder / f"{v:04d}_{i:06d}.png"), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))
            count += 1
    return count


def frame_fid(model, generated: list[np.ndarray], real: list[np.ndarray], every: int = 1,
              device: str | torch.device = "cpu") -> dict[str, object]:
    """FID of every ``every``-th frame of the generated videos against those of the real ones."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    with tempfile.TemporaryDirectory(prefix="fid_") as tmp:
        gen_dir, real_dir = Path(tmp) / "generated", Path(tmp) / "real"
        gen_dir.mkdir()
        real_dir.mkdir()
        counts = write_frames(generated, gen_dir, every), write_frames(real, real_dir, every)
        result: dict[str, object] = {"variant": model.variant, "frames_generated": counts[0],
                                     "frames_real": counts[1], "every": every, "value": None, "reason": None}
        if min(counts) < MIN_FRAMES:
            result["reason"] = f"needs >= {MIN_FRAMES} frames per side, got {counts[0]} and {counts[1]}"
            return result
        with torch.inference_mode():
            value = model(str(gen_dir), str(real_dir), mode="clean", num_workers=0, batch_size=8,
                          device=torch.device(device), verbose=False)
    result["value"] = float(value)
    return result
