"""Audio-feature stage: wav2vec2/HuBERT features resampled to one row per 25 fps video frame."""
from __future__ import annotations

import numpy as np

from models.audio_encoder import AudioEncoder
from pipeline.clip import Clip
from pipeline.stages.base import Stage
from pipeline.stages.models import device_for, weights_choice
from models.weights import weight_id


class AudioFeatureStage(Stage):
    name = "audio_features"

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = cfg["models"]["audio_encoder"]
        self.registry_name = str(opts["name"])
        self.weights = weights_choice(cfg, "audio_encoder", self.registry_name)
        self.encoder = AudioEncoder(self.weights, device=device_for(cfg),
                                    random_config=opts.get("random_config"), seed=int(cfg["weights"]["seed"]))

    def process(self, clip: Clip) -> None:
        feat = self.encoder.encode(clip.audio, clip.n_frames)
        if feat.shape[0] != clip.n_frames:
            raise ValueError(f"audio encoder returned {feat.shape[0]} rows, expected {clip.n_frames}")
        if not np.isfinite(feat).all():
            clip.reject(self.name, "non_finite", "the audio encoder returned NaN or Inf")
            return
        clip.audio_feat = feat

    def describe(self) -> dict:
        """The model id carries the input settings (``do_normalize`` and the rest, per window):
        features of one checkpoint fed two ways differ, so the manifests say which way."""
        return {"model_id": f"{self.encoder.model_id};{self.encoder.input_id}",
                "weight_id": weight_id(self.weights)}
