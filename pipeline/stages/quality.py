"""Quality stage: a no-reference image-quality score of the face crops (Q-Align by default).

Any pyiqa no-reference metric works by name (``filters.quality.metric``); the clip score is the
aggregate over ``n_frames`` sampled crops. Metrics where lower is better (PIQE, BRISQUE...) are
thresholded the other way round, so ``threshold`` always means "the worst quality kept".
"""
from __future__ import annotations

from filters.quality import QualityScorer
from pipeline.clip import Clip
from pipeline.stages.base import Filter
from pipeline.stages.models import device_for


class QualityStage(Filter):
    name = "quality"
    sections = ("quality",)

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = self.settings("quality")
        self.metric = str(opts["metric"])
        # Q-Align is the one pyiqa metric with weights built here at random (weights.random); the
        # others either need none or fetch their own.
        random_qalign = str(cfg["models"]["quality"]["random_config"]) \
            if cfg["weights"]["random"] and self.metric == "qalign" else None
        self.scorer = QualityScorer(metric=self.metric, n_frames=int(opts["n_frames"]),
                                    aggregate=str(opts["aggregate"]), device=device_for(cfg),
                                    random_qalign=random_qalign, seed=int(cfg["weights"]["seed"]))
        self.lower_better = self.scorer.lower_better
        self.threshold = float(opts["threshold"])

    def process(self, clip: Clip) -> None:
        score, _ = self.scorer.score(clip.lp_crops)
        clip.scores["quality"] = float(score)
        worse = score > self.threshold if self.lower_better else score < self.threshold
        self.verdict(clip, "quality", "low_quality" if worse else None, f"{self.metric} {score:.3f}")

    def describe(self) -> dict:
        """Also the metric's direction, which the manifest records beside the threshold."""
        return {"model_id": f"pyiqa:{self.metric}", "weight_id": self.scorer.weight_id,
                "lower_better": bool(self.lower_better)}
