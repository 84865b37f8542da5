"""The demo's input: the sample clips, listed with speaker labels that fix their split.

The split is a hash of each group's name (``shards.split``), and with a handful of videos and 5% of
groups in validation every video can land in training, leaving nothing to validate on or to build a
test set from. The demo therefore lists its videos in ``OUT/demo_inputs.csv``, one speaker per
video, named so that exactly one video lands in validation: the shortest one with an audio stream
that is at least ``MIN_VAL_S`` long (a test-set item needs a clip of 5 s or more), else the longest
one with audio. The names depend only on the file names, so the split is the same wherever the
repository lives.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import av

from pipeline.inputs import VIDEO_EXTENSIONS
from pipeline.media import media_available, media_dir
from shards.split import TRAIN, VAL, assign_split, split_group

log = logging.getLogger(__name__)

LIST_NAME = "demo_inputs.csv"
MIN_VAL_S = 5.5  # a kept clip of at least 5 s must fit after the shot split trims the ends
# The sample clips are short: a demo keeps clips of 3 to 10 s and scores quality with an offline
# metric. With random weights the model filters only score, since their numbers mean nothing.
OVERRIDES = ("clips.min_len_s=3", "clips.max_len_s=10", "filters.quality.metric=piqe",
             "filters.quality.threshold=60")
RANDOM_OVERRIDES = ("filters.quality.mode=score", "filters.sync.mode=score",
                    "filters.head_motion.mode=score", "models.audio_encoder.random_config=small")


@dataclass(frozen=True)
class DemoVideo:
    path: Path
    seconds: float
    has_audio: bool


def probe(path: Path) -> DemoVideo:
    with av.open(str(path)) as container:
        seconds = float(container.duration or 0) / av.time_base
        return DemoVideo(path, seconds, any(s.type == "audio" for s in container.streams))


def validation_video(videos: list[DemoVideo]) -> DemoVideo | None:
    """The one video the demo puts in validation (None when no video has audio)."""
    voiced = [v for v in videos if v.has_audio]
    long_enough = [v for v in voiced if v.seconds >= MIN_VAL_S]
    if long_enough:
        return min(long_enough, key=lambda v: (v.seconds, v.path.name))
    return max(voiced, key=lambda v: (v.seconds, v.path.name), default=None)


def speaker_for(stem: str, split: str, val_fraction: float) -> str:
    """``stem``, or ``stem-N`` with the smallest N, whose speaker group lands in ``split``."""
    if split == VAL and val_fraction <= 0 or split == TRAIN and val_fraction >= 1:
        raise ValueError(f"split.val_fraction={val_fraction} leaves no {split} split for the demo")
    for n in range(100_000):
        name = stem if n == 0 else f"{stem}-{n}"
        if assign_split(split_group(name, ""), val_fraction) == split:
            return name
    raise ValueError(f"no speaker name for {stem} lands in {split} at val_fraction {val_fraction}")


def write_list(folder: Path, out_file: Path, val_fraction: float) -> Path:
    """Write the labelled list of the videos in ``folder`` to ``out_file`` and return it."""
    videos = [probe(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS]
    if not videos:
        raise FileNotFoundError(f"no videos in {folder}")
    val = validation_video(videos)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "speaker"])
        for video in videos:
            split = VAL if video == val else TRAIN
            writer.writerow([str(video.path.resolve()), speaker_for(video.path.stem, split, val_fraction)])
    log.info("demo input: %d videos listed in %s, %s in validation", len(videos), out_file,
             val.path.name if val else "none")
    return out_file


def demo_input(out_folder: Path, val_fraction: float) -> str:
    """The labelled list of the real sample clips when present, else of clips synthesised into
    ``out_folder/demo_media``."""
    if media_available():
        folder = media_dir()
    else:
        from pipeline.media_kit import make_standard_set

        folder = out_folder / "demo_media"
        if not any(folder.glob("*.mp4")):
            log.info("sample media not found at %s: synthesising clips into %s", media_dir(), folder)
            make_standard_set(folder)
    return str(write_list(folder, out_folder / LIST_NAME, val_fraction))
