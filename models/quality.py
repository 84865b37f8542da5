"""A no-reference image-quality model of pyiqa, built with clear errors and run on uint8 frames.

The default, ``qalign`` (Q-Align, ~16 GB of weights in the Hugging Face cache), is what the JoyVASA
paper filtered with. Any other pyiqa no-reference metric works by name (``topiq_nr``, ``musiq``,
``clipiqa``... for smaller GPUs; ``piqe`` and ``entropy`` need no weights at all). pyiqa fetches
weights at run time; where that is impossible ``MetricUnavailableError`` says what it wanted.
``lower_better`` comes from pyiqa (PIQE, BRISQUE, NIQE: lower is better). How a clip's score is
made from frame scores is the filter's business (``filters.quality``).
"""
from __future__ import annotations

import os

import numpy as np
import torch

# pyiqa metrics whose preprocessing takes one image at a time.
ONE_IMAGE_METRICS = ("qalign", "qalign_4bit", "qalign_8bit")


class MetricUnavailableError(RuntimeError):
    """A pyiqa metric could not be built here (weights not downloadable, or a package missing)."""


def _wanted_downloads(exc: BaseException) -> list[str]:
    """URLs and Hugging Face repos that the failing pyiqa/transformers download calls asked for.

    Read from the arguments of the calls in the traceback (``url`` in pyiqa's
    ``load_file_from_url``, ``path_or_repo_id``/``repo_id`` in the Hugging Face loaders).
    """
    found: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            local = tb.tb_frame.f_locals
            for key in ("url", "path_or_repo_id", "repo_id"):
                value = local.get(key)
                if not isinstance(value, (str, os.PathLike)) or str(value) in found:
                    continue
                if key != "url" or "://" in str(value):  # urllib's own frames hold bare paths as url
                    found.append(str(value))
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return found


def _cache_dirs() -> str:
    from huggingface_hub import constants
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    return f"pyiqa cache {DEFAULT_CACHE_DIR}, Hugging Face cache {constants.HF_HUB_CACHE}"


def create_metric(metric: str, device: str | torch.device):
    """``pyiqa.create_metric(metric, as_loss=False, device=device)``, with clear errors."""
    import pyiqa

    from models.qalign_random import add_missing_mask_helper

    if metric in ONE_IMAGE_METRICS:
        add_missing_mask_helper()

    available = pyiqa.list_models(metric_mode="NR")
    if metric not in available:
        raise ValueError(f"{metric!r} is not a pyiqa no-reference metric; choose one of {', '.join(available)}")
    try:
        return pyiqa.create_metric(metric, as_loss=False, device=device)
    except ImportError as exc:
        raise MetricUnavailableError(f"pyiqa metric {metric!r} needs the Python package {exc.name!r}, "
                                     f"which is not installed ({exc})") from exc
    except OSError as exc:  # urllib, requests and huggingface_hub failures are all OSErrors
        wanted = _wanted_downloads(exc)
        raise MetricUnavailableError(
            f"pyiqa metric {metric!r} needs weights that are not available offline; it tried to fetch "
            f"{', '.join(wanted) if wanted else 'files it did not name'}. Fetch them on a machine with internet "
            f"access into the caches ({_cache_dirs()}), or choose a metric that needs no weights such as "
            f"'piqe'. Cause: {type(exc).__name__}: {exc}") from exc


class IqaModel:
    """A pyiqa no-reference metric on a device, scoring (N, H, W, 3) uint8 RGB frames in batches.

    ``random_qalign``: for ``qalign``, random weights of its architecture at that size
    (``models.qalign_random``: ``full`` or ``tiny``) instead of the hub's 16 GB; speed runs only.
    """

    def __init__(self, metric: str = "qalign", device: str | torch.device | None = None,
                 batch_size: int = 8, random_qalign: str | None = None, seed: int = 0):
        self.metric_name = metric
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if random_qalign is not None and metric != "qalign":
            raise ValueError(f"random weights are built for pyiqa's 'qalign' only, not {metric!r}")
        if random_qalign is not None:
            from models.qalign_random import build_qalign_metric

            self.metric = build_qalign_metric(random_qalign, self.device, seed)
        else:
            self.metric = create_metric(metric, self.device)
        self.lower_better = bool(self.metric.lower_better)
        self.score_range = self.metric.score_range
        self.batch_size = 1 if metric in ONE_IMAGE_METRICS else int(batch_size)
        self.weight_id = f"pyiqa-{_pyiqa_version()}:{metric}" + \
            (f":random:{random_qalign}:seed{seed}" if random_qalign is not None else "")

    @torch.inference_mode()
    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        """(N,) float32 metric scores of (N, H, W, 3) uint8 RGB frames, in batches."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
        scores = []
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + self.batch_size]))
            x = batch.permute(0, 3, 1, 2).to(self.device, torch.float32) / 255.0
            scores.append(torch.as_tensor(self.metric(x)).reshape(-1).float().cpu().numpy())
        return np.concatenate(scores)


    @property
    def scores_videos(self) -> bool:
        """Whether the metric is Q-Align, whose model also scores a video as one multi-image prompt."""
        return self.metric_name in ONE_IMAGE_METRICS

    @torch.inference_mode()
    def video_score(self, frames: np.ndarray) -> float:
        """Q-Align's video score of (N, H, W, 3) uint8 RGB frames, all in one prompt ("How would you
        rate the quality of this video?"), on pyiqa's 1..5 weighting. pyiqa's metric wrapper is
        image-only; the Q-Align model it loads has the video scorer, called here."""
        from PIL import Image

        if not self.scores_videos:
            raise ValueError(f"pyiqa metric {self.metric_name!r} has no video scorer; only Q-Align does")
        images = [Image.fromarray(np.ascontiguousarray(f)) for f in np.asarray(frames)]
        scores = self.metric.net.model.score([images], task_="quality", input_="video")
        return float(torch.as_tensor(scores).reshape(-1)[0])


def _pyiqa_version() -> str:
    import pyiqa

    return str(getattr(pyiqa, "__version__", "unknown"))
