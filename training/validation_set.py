"""The fixed validation windows of a run: chosen from the manifest by key, read once, cached.

Why: building the set by streaming the whole validation split costs a start-up that grows with the
data. With a manifest the set is chosen from its rows alone: every kept validation clip gets a
priority from a hash of (seed, key) and its length (an exponential race, so a clip's chance
grows with its number of windows, as when windows are drawn one by one), and clips are taken in
that order until their inference tiles (:meth:`WindowSampler.tile`) make up the wanted number of
windows. Only those clips are read: seeking to their members in a local shard, streaming a shard in
an object store as far as the last of them. The choice depends on nothing but the keys, so it spreads over the whole split and is the same on every machine.
Without a manifest (older test layouts) the split is streamed once and sampled with a fixed seed
(:func:`training.data.validation_batches`).

The windows are saved in the run folder (``validation.pt``) with the keys they come from and the
settings they were built for; a resumed run, and a later ``training.run --validate``, reuse them
as long as those settings are the same.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from shards import storage
from shards.reader import SampleError
from training.data import (DataInputs, WindowSampler, WindowSpec, assemble_batch, decode_clip,
                           validation_batches, wanted_member)
from training.model import ModelConfig
from training.normalize import Normalizer

log = logging.getLogger(__name__)

CACHE_NAME = "validation.pt"
CACHE_VERSION = 1


@dataclass
class ValidationSet:
    """Batches of validation windows (CPU tensors: ``motion`` normalised, ``audio`` as stored,
    ``valid``, ``first``, ``keys``), the clips they come from, and the settings they fit."""
    batches: list[dict[str, Any]]
    keys: list[str]
    settings: dict[str, Any]


def settings_for(model_cfg: ModelConfig, normalizer: Normalizer, n_batches: int, batch_size: int,
                 seed: int, manifest: str | None) -> dict[str, Any]:
    """What the cached windows depend on: their shape, the normalisation, how many, and where from."""
    norm = normalizer.shift.tobytes() + normalizer.scale.tobytes()  # motion is cached normalised
    return {"version": CACHE_VERSION, "w_pre": model_cfg.w_pre, "w_cur": model_cfg.w_cur,
            "audio_dim": model_cfg.audio_dim, "n_batches": n_batches, "batch_size": batch_size,
            "seed": seed, "manifest": manifest, "normalization": hashlib.sha256(norm).hexdigest()}


def clip_priority(keys: pd.Series, n_windows: np.ndarray, seed: int) -> np.ndarray:
    """Lower goes first: -log(u) / windows with u uniform from sha256(seed, key), so each clip is
    chosen with a weight of its window count, independently of where it sits in the split."""
    u = np.array([(int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:8], "big") + 0.5)
                  / 2.0**64 for k in keys.astype(str)])
    return -np.log(u) / np.maximum(n_windows, 1)


def choose_clips(val: pd.DataFrame, w_cur: int, seed: int) -> pd.DataFrame:
    """The validation clips (``key``, ``shard``, ``n_frames`` rows) in the order they are taken."""
    val = val.dropna(subset=["key", "shard"])
    n_windows = np.ceil(val["n_frames"].to_numpy(dtype=np.float64) / w_cur)
    order = np.argsort(clip_priority(val["key"], n_windows, seed), kind="stable")
    return val.iloc[order]


def read_samples(url: str, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """The members of the samples ``keys`` of one shard, without the raw audio. A local shard is
    read by its tar headers, seeking past every other member; a shard in an object store is
    streamed (one request) until the last wanted sample is complete."""
    remote = storage.has_scheme(url)
    found: dict[str, dict[str, bytes]] = {}
    handle = storage.open_stream(url) if remote else open(url, "rb")
    with handle, tarfile.open(fileobj=handle, mode="r|" if remote else "r:") as tar:
        for info in tar:
            key, _, member = info.name.partition(".")
            if key not in keys:
                if len(found) == len(keys):
                    break  # every wanted sample is complete: the rest of the shard is not read
                continue
            if info.isfile() and wanted_member(info.name):
                data = tar.extractfile(info)
                found.setdefault(key, {"__key__": key, "__url__": url})[member] = data.read() if data else b""
    return found


def build_from_manifest(inputs: DataInputs, normalizer: Normalizer, model_cfg: ModelConfig,
                        n_windows: int, seed: int, max_errors: int = 50) -> tuple[list[WindowSpec], list[str]]:
    """The chosen windows (tiles of the chosen clips, in priority order), reading only those clips."""
    assert inputs.clips is not None
    val = inputs.clips[inputs.clips["split"] == "val"]
    ordered = choose_clips(val, model_cfg.w_cur, seed)
    present = {p.rsplit("/", 1)[-1]: p for p in inputs.shards["val"]}
    sampler = WindowSampler(model_cfg.w_pre, model_cfg.w_cur)
    specs: list[WindowSpec] = []
    keys: list[str] = []
    errors, index = 0, 0
    rows = list(zip(ordered["key"].astype(str), ordered["shard"].astype(str), ordered["n_frames"]))
    while len(specs) < n_windows and index < len(rows):
        # the next clips whose windows would complete the set, read shard by shard
        take, need = [], n_windows - len(specs)
        while need > 0 and index < len(rows):
            take.append(rows[index])
            need -= math.ceil(int(rows[index][2]) / model_cfg.w_cur)
            index += 1
        wanted: dict[str, set[str]] = {}
        for key, shard, _ in take:
            if shard in present:
                wanted.setdefault(present[shard], set()).add(key)
        raw: dict[str, dict[str, bytes]] = {}
        for url, shard_keys in sorted(wanted.items()):
            try:
                raw.update(read_samples(url, shard_keys))
            except (OSError, tarfile.TarError) as exc:
                errors += 1
                log.warning("validation shard %s unreadable: %s", url, exc)
        for key, shard, _ in take:
            try:
                if key not in raw:
                    raise SampleError(f"sample {key} not found in {shard}")
                clip = decode_clip(raw[key], "val", normalizer, model_cfg.audio_dim)
                if clip is None:
                    raise SampleError(f"sample {key} in {shard} is not a validation clip")
            except SampleError as exc:
                errors += 1
                log.warning("validation clip skipped: %s", exc)
                if errors > max_errors:
                    raise
                continue
            tiles = sampler.tile(clip)[:n_windows - len(specs)]
            specs += tiles
            keys.append(key)
    return specs, keys


def build_validation_set(inputs: DataInputs, normalizer: Normalizer, model_cfg: ModelConfig,
                         data_cfg: Any, n_batches: int, batch_size: int, seed: int) -> ValidationSet:
    """The run's validation windows: by key from the manifest, else one sampled pass (no manifest)."""
    settings = settings_for(model_cfg, normalizer, n_batches, batch_size, seed, inputs.manifest_path)
    n_windows = n_batches * batch_size
    if n_windows <= 0 or not inputs.shards["val"]:
        return ValidationSet([], [], settings)
    if inputs.clips is not None and "key" in inputs.clips:
        specs, keys = build_from_manifest(inputs, normalizer, model_cfg, n_windows, seed)
        batches = [assemble_batch(specs[i:i + batch_size], model_cfg.w_pre, model_cfg.w_cur)
                   for i in range(0, len(specs), batch_size)]
        return ValidationSet(batches, keys, settings)
    windows = validation_batches(inputs.shards["val"], normalizer, model_cfg, data_cfg, seed,
                                 n_batches, batch_size, keys=inputs.keys["val"])
    keys = list(dict.fromkeys(k for b in windows for k in b["keys"]))
    return ValidationSet(windows, keys, settings)


def save_validation_set(path: Path, vset: ValidationSet) -> None:
    """Write atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"settings": vset.settings, "keys": vset.keys, "batches": vset.batches}, tmp)
    os.replace(tmp, path)


def load_validation_set(path: Path) -> ValidationSet | None:
    """The cached set, or None when there is none."""
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    return ValidationSet(state["batches"], state["keys"], state["settings"])


def run_validation_set(run_dir: Path, inputs: DataInputs | None, normalizer: Normalizer,
                       model_cfg: ModelConfig, data_cfg: Any, n_batches: int, batch_size: int,
                       seed: int, reuse: bool = True) -> ValidationSet:
    """The run folder's cached set when it fits these settings (and ``reuse``: a fresh run
    builds its own); otherwise built (from ``inputs``) and cached. ``inputs=None`` only reuses: a
    missing or unfit cache is then an error."""
    path = run_dir / CACHE_NAME
    cached = load_validation_set(path) if reuse else None
    manifest = inputs.manifest_path if inputs is not None else None
    wanted = settings_for(model_cfg, normalizer, n_batches, batch_size, seed, manifest)
    if cached is not None:
        differs = sorted(k for k in wanted if k != "manifest" and cached.settings.get(k) != wanted[k])
        if inputs is not None and cached.settings.get("manifest") != manifest:
            differs.append("manifest")
        if not differs:
            log.info("validation set: %d windows of %d clips from %s", sum(len(b["keys"]) for b in cached.batches),
                     len(cached.keys), path)
            return cached
        log.info("validation set in %s was built for other settings (%s): building it again",
                 path, ", ".join(differs))
    if inputs is None:
        raise FileNotFoundError(f"no validation set for these settings in {run_dir} (pass --shards)")
    vset = build_validation_set(inputs, normalizer, model_cfg, data_cfg, n_batches, batch_size, seed)
    save_validation_set(path, vset)
    log.info("validation set: %d windows of %d clips, saved to %s",
             sum(len(b["keys"]) for b in vset.batches), len(vset.keys), path)
    return vset
