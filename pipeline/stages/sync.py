"""Lip-sync stage (SyncNet, the syncnet_python protocol): offset, Sync-C and Sync-D per clip.

Rejects clips whose confidence is below ``filters.sync.min_conf`` or whose best audio offset is
more than ``filters.sync.max_abs_offset`` frames away. With ``shift_audio`` a clip that passes but
is off by a few frames gets its audio shifted to match the video (the shift is recorded as
``audio_shift_frames``), so the motion it is trained on lines up with its speech.
"""
from __future__ import annotations

import numpy as np

from filters.syncnet import sync_scores
from models.syncnet import SyncNetOnnxCpu, load_syncnet
from pipeline.clip import Clip
from pipeline.stages.base import Filter
from models.onnx_cpu import use_onnx
from pipeline.stages.models import device_for, weights_choice
from models.weights import weight_id
from shards.format import SAMPLES_PER_FRAME

MODEL_NAME = "syncnet_v2"


def shift_audio(audio: np.ndarray, offset_frames: int) -> np.ndarray:
    """Delay the audio by ``offset_frames`` (SyncNet's offset > 0 means the audio leads) keeping its
    length; the samples shifted in are silence."""
    shift = int(offset_frames) * SAMPLES_PER_FRAME
    if shift == 0:
        return audio
    out = np.zeros_like(audio)
    if shift > 0:
        out[shift:] = audio[:-shift]
    else:
        out[:shift] = audio[-shift:]
    return out


class SyncStage(Filter):
    name = "sync"
    sections = ("sync",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.device = device_for(cfg)
        self.weights = weights_choice(cfg, "syncnet", MODEL_NAME)
        self.model = load_syncnet(self.weights, device=self.device, seed=int(cfg["weights"]["seed"]))
        if use_onnx(cfg, self.device):
            self.model = SyncNetOnnxCpu(self.model, threads=int(cfg["ray"]["torch_threads"]),
                                        cache_dir=cfg["models"].get("onnx_cache_dir"))
        self.opts = self.settings("sync")

    def process(self, clip: Clip) -> None:
        result = sync_scores(self.model, clip.sync_crops, clip.audio, vshift=int(self.opts["vshift"]),
                             batch_size=int(self.opts["batch_size"]),
                             window_stride=int(self.opts["window_stride"]))
        clip.scores.update(sync_conf=result.conf, sync_dist=result.dist, sync_offset=float(result.offset),
                           audio_shift_frames=0.0)
        if abs(result.offset) > int(self.opts["max_abs_offset"]):
            self.verdict(clip, "sync", "sync_offset", f"best audio offset {result.offset} frames")
        elif result.conf < float(self.opts["min_conf"]):
            self.verdict(clip, "sync", "low_sync_conf", f"Sync-C {result.conf:.2f}")
        if clip.kept and self.opts["shift_audio"] and result.offset != 0 \
                and abs(result.offset) <= int(self.opts["max_abs_offset"]):
            clip.audio = shift_audio(clip.audio, result.offset)
            clip.scores["audio_shift_frames"] = float(result.offset)
        clip.sync_crops = None  # not needed by any later stage

    def describe(self) -> dict:
        return {"model_id": MODEL_NAME, "weight_id": weight_id(self.weights)}
