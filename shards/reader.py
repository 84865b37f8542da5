"""Read samples back from shards: plain tar iteration, no framework needed.

``decode_sample`` takes the WebDataset-style dict (``__key__`` plus member bytes), so the same
decoding serves this reader, the trainer's WebDataset pipeline and the audit.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import soundfile as sf

from shards.format import MEMBERS


class SampleError(ValueError):
    """A sample whose members are missing or undecodable."""


def decode_sample(raw: dict[str, Any], with_audio: bool = True) -> dict[str, Any]:
    """Decode every member; ``with_audio=False`` leaves the FLAC out (``audio`` is None), as the trainer
    reads only the cached features and decoding the FLAC would be most of its loading time."""
    key = raw.get("__key__", "?")
    missing = [m for m in MEMBERS if m not in raw and (with_audio or m != "audio.flac")]
    if missing:
        raise SampleError(f"sample {key}: missing members {missing}")
    try:
        with np.load(io.BytesIO(raw["motion.npz"]), allow_pickle=False) as npz:
            motion = {name: npz[name] for name in npz.files}
        audio_feat = np.load(io.BytesIO(raw["audio_feat.npy"]), allow_pickle=False)
        audio, rate = sf.read(io.BytesIO(raw["audio.flac"]), dtype="int16") if with_audio \
            else (None, None)
        meta = json.loads(raw["json"])
    except Exception as exc:  # any decoding failure means a corrupt member
        raise SampleError(f"sample {key}: cannot decode ({type(exc).__name__}: {exc})") from exc
    return {"__key__": key, "motion": motion, "audio_feat": audio_feat, "audio": audio,
            "sample_rate": rate, "meta": meta}


def iter_raw(path: str | Path | BinaryIO) -> Iterator[dict[str, Any]]:
    """Group a tar's members by key, in file order, yielding {"__key__", member: bytes}.
    ``path`` may also be an open binary stream (e.g. from ``shards.storage.open_stream``)."""
    current: dict[str, Any] = {}
    opened = tarfile.open(fileobj=path, mode="r|*") if hasattr(path, "read") else tarfile.open(path, "r|*")
    with opened as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, member = info.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current.setdefault("__key__", key)
            data = tar.extractfile(info)
            current[member] = data.read() if data else b""
    if current:
        yield current


def iter_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    for raw in iter_raw(path):
        yield decode_sample(raw)
