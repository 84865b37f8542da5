"""The train/validation split, by speaker when known, else by face identity (``shards.identity``),
else by source video, never by clip.

A group's split is a pure function of its name: the first 8 bytes of its sha256 as a fraction of
2**64, "val" when below ``val_fraction``. Every clip of a speaker (or video) lands on the same
side, in every run and every resume, whatever else is in the input.
"""
from __future__ import annotations

import hashlib

TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)


def split_group(speaker: str | None, video_id: str, identity: str | None = None) -> str:
    """The unit a split never divides: ``speaker:<name>`` when given, else the video's identity
    group (``face:<id>``, from ``shards.identity``) when known, else ``video:<id>``."""
    if speaker:
        return f"speaker:{speaker}"
    return identity if identity else f"video:{video_id}"


def assign_split(group: str, val_fraction: float) -> str:
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"split.val_fraction must be within [0, 1], got {val_fraction}")
    value = int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2.0**64
    return VAL if value < val_fraction else TRAIN


def split_of(speaker: str | None, video_id: str, val_fraction: float, identity: str | None = None) -> str:
    return assign_split(split_group(speaker, video_id, identity), val_fraction)
