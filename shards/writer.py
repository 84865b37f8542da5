"""Write samples into WebDataset tar shards that appear atomically and byte-for-byte reproducibly.

A shard is written under a temporary name and renamed when complete, so readers never see a
partial shard; a crash leaves only a ``.tmp`` file that the next run removes. Tar headers carry
fixed owners and times, so the same samples give the same bytes on every run.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from shards.format import FORMAT_VERSION, MOTION_SHAPES, SAMPLE_RATE, shard_name

TMP_SUFFIX = ".tmp"


def encode_sample(motion: dict[str, np.ndarray], audio_feat: np.ndarray, audio: np.ndarray,
                  meta: dict[str, Any]) -> dict[str, bytes]:
    """Validate and serialise one clip's arrays into the sample's member bytes."""
    n = int(np.asarray(motion["exp"]).shape[0])
    arrays = {}
    for name, shape in MOTION_SHAPES.items():
        arr = np.asarray(motion[name], dtype=np.float32)
        arr = arr.reshape(n, *shape)
        if not np.isfinite(arr).all():
            raise ValueError(f"motion '{name}' holds NaN or Inf")
        arrays[name] = arr
    feat = np.asarray(audio_feat)
    if feat.ndim != 2 or feat.shape[0] != n:
        raise ValueError(f"audio features must be (T={n}, D), got {feat.shape}")
    if not np.isfinite(feat).all():
        raise ValueError("audio features hold NaN or Inf")
    audio = np.asarray(audio)
    if audio.dtype != np.int16 or audio.ndim != 1:
        raise ValueError(f"audio must be 1-D int16 mono, got {audio.dtype} {audio.shape}")

    motion_buf = io.BytesIO()
    np.savez(motion_buf, **arrays)
    feat_buf = io.BytesIO()
    np.save(feat_buf, feat.astype(np.float16))
    flac_buf = io.BytesIO()
    sf.write(flac_buf, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    meta = {**meta, "format_version": FORMAT_VERSION, "n_frames": n}
    return {
        "motion.npz": motion_buf.getvalue(),
        "audio_feat.npy": feat_buf.getvalue(),
        "audio.flac": flac_buf.getvalue(),
        "json": json.dumps(meta, sort_keys=True, default=_json_default).encode(),
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def checksums(members: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())}


class ShardWriter:
    """Writes ``shard-{index:06d}[-{split}].tar``, rolling over to ``...-{part:02d}.tar`` once a
    shard reaches ``target_bytes``. Use as a context manager; call :meth:`abort` (or let an
    exception propagate) to drop the shard being written."""

    def __init__(self, out_dir: str | Path, index: int, target_bytes: int = 1 << 30,
                 split: str | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.split = split
        self.target_bytes = target_bytes
        self.part = 0
        self.written: list[str] = []  # completed shard names, in order
        self._tar: tarfile.TarFile | None = None
        self._size = 0

    def _name(self) -> str:
        return shard_name(self.index, self.part, self.split)

    def _open(self) -> None:
        self._path = self.out_dir / self._name()
        self._tmp = self._path.with_name(self._path.name + TMP_SUFFIX)
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._size = 0

    def write(self, key: str, motion: dict[str, np.ndarray], audio_feat: np.ndarray,
              audio: np.ndarray, meta: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """Append one sample; returns (shard name, {member: sha256})."""
        if "." in key:
            raise ValueError(f"sample keys must not contain dots: {key!r}")
        members = encode_sample(motion, audio_feat, audio, meta)
        if self._tar is not None and self._size >= self.target_bytes:
            self._close_part()
            self.part += 1
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for name, data in members.items():
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
            self._size += len(data) + 512
        return self._name(), checksums(members)

    def _close_part(self) -> None:
        assert self._tar is not None
        self._tar.close()
        self._tmp.replace(self._path)
        self.written.append(self._path.name)
        self._tar = None

    def close(self) -> list[str]:
        if self._tar is not None:
            self._close_part()
        return self.written

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
