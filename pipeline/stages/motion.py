"""Motion stage: every raw LivePortrait motion-extractor output for each 25 fps frame.

Each clip's crops run in batches of ``models.motion_extractor.batch_size`` counted from the clip's
first frame, so a clip's numbers do not depend on which other clips share the worker.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.clip import Clip
from models.liveportrait.motion_extractor import extract, load_motion_extractor, on_onnx_cpu
from models.onnx_cpu import use_onnx
from pipeline.stages.base import Stage
from pipeline.stages.models import device_for, dtype_for, weights_choice
from models.weights import weight_id

MODEL_NAME = "liveportrait_motion_extractor"
# On a CPU small batches run faster per frame than large ones (their activations stay in cache);
# a GPU wants large batches to fill it.
AUTO_BATCH = {"cpu": 4, "cuda": 32}


def batch_size(setting: int | str, device: str) -> int:
    if setting == "auto":
        return AUTO_BATCH["cuda" if device.startswith("cuda") else "cpu"]
    return int(setting)


class MotionStage(Stage):
    name = "motion"

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = cfg["models"]["motion_extractor"]
        self.device = device_for(cfg)
        self.weights = weights_choice(cfg, "motion_extractor", MODEL_NAME)
        self.model = load_motion_extractor(self.weights, device=self.device,
                                           dtype=dtype_for(opts.get("dtype"), self.device),
                                           seed=int(cfg["weights"]["seed"]))
        if use_onnx(cfg, self.device):
            self.model = on_onnx_cpu(self.model, threads=int(cfg["ray"]["torch_threads"]),
                                     cache_dir=cfg["models"].get("onnx_cache_dir"))
        self.batch_size = batch_size(opts["batch_size"], self.device)

    def process(self, clip: Clip) -> None:
        clip.motion = extract(self.model, clip.lp_crops, batch_size=self.batch_size,
                              amp_dtype=torch.float16 if self.device.startswith("cuda") else None)
        if len(clip.motion["exp"]) != clip.n_frames:
            raise ValueError(f"extractor returned {len(clip.motion['exp'])} frames, expected {clip.n_frames}")
        clip.lp_crops = None  # the crops are done with
        if not all(np.isfinite(v).all() for v in clip.motion.values()):
            clip.reject(self.name, "non_finite", "the extractor returned NaN or Inf")

    def describe(self) -> dict:
        return {"model_id": MODEL_NAME, "weight_id": weight_id(self.weights)}
