"""Training windows streamed from WebDataset shards, never holding the dataset in memory.

The stream, per loader worker and per rank::

    shard visits (one shard at a time, picked at random, forever)
      -> tar samples (a truncated or corrupt shard or sample is skipped and counted)
      -> clips: key and split filter first, then decode, the 70-dim vector, normalisation
      -> clip shuffle buffer
      -> window pool: a few decoded clips of the shard at a time; each clip yields a budget of
         windows (``coverage * frames / window``, times its dataset's oversampling factor) drawn at
         random starts, so one decode feeds many windows and memory stays flat
      -> batches assembled straight from the clips' arrays.

A window is ``w_pre`` frames of previous context then ``w_cur`` current frames. A window starting
at frame 0 is a *first window*: it has no context (the model substitutes its start tokens) and the
context frames are masked out of the loss. With probability ``truncate_prob`` the current part is
cut short, as the last window of an utterance is at inference; frames past the cut (or past the
clip's end) carry zero motion and zero audio and are masked. Validation tiles each clip exactly as
:func:`training.diffusion.generate` does.

The manifest decides, clip by clip: each split reads the shards holding its kept clips and, in
them, only the samples whose key the manifest keeps (a re-thresholded manifest from
``manifests.audit --rethreshold ... --write-manifest`` trains exactly its selection). The job
writes each split to its own shards (``shard-NNNNNN-train.tar``, ``-val.tar``), so the training
stream never reads a validation sample's bytes; older outputs mix both splits in a shard and still
train, by key. Without a manifest a shard's name, else every sample's ``meta["split"]``, decides. A
shard the manifest names but the folder lacks is an error naming it, unless
``data.allow_missing_shards`` is set. The statistics follow the same selection: the output's
``stats.json`` for its own manifest, otherwise merged from the per-clip moments the job stored
(``shards.stats``), never by reading the shards.

Shards are read from wherever the job wrote them: a folder or an object-store URI (``s3://``,
``gs://``; endpoints from the environment as for the job, ``shards.storage``), streamed.

Determinism and resuming: a training stream (one per rank and loader worker) is a sequence of
shard *visits*. Visit ``v`` picks its shard and draws all its randomness from a generator seeded by
(seed, rank, stream, v), and its windows come from that shard's clips alone, so the stream's
position after any batch is two counters: (visit, windows drawn in that visit). Each batch carries
its position; the checkpoint stores the last consumed one per stream, and a resumed stream
regenerates that one visit and skips its first windows: at most one shard is read again, however
many steps the run had made, and the windows that follow are those of the straight run. With a
manifest (which says which shards hold training clips) the shards are split across ranks; without
one every rank samples all of them with its own seed. The validation set is chosen from the
manifest by key (``training.validation_set``).

Per-dataset mixing: the paper oversamples so that each dataset contributes equally. The manifest
gives each dataset's training frames; a clip's window budget is multiplied by
``share_wanted / share_actual`` (shares from ``data.dataset_weights``, equal by default).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from shards import storage
from shards.format import SHARD_NAME_RE, shard_split
from shards.reader import SampleError, decode_sample
from shards.split import SPLITS
from shards.stats import STATS_FILE, DatasetMoments, merge_rows, moments_name
from shards.vector import VECTOR_DIM, motion_to_vector
from training.model import ModelConfig
from training.normalize import Normalizer, StatsError, load_stats

log = logging.getLogger(__name__)


class FeatureWidthError(ValueError):
    """Audio features whose width does not match the model (a configuration error, never skipped)."""


class DataStreamError(RuntimeError):
    """A stream that only fails, or finds no clip of its split: it would otherwise spin forever."""


MANIFEST_FILE = "manifests/clips.parquet"
MANIFEST_COLUMNS = ("dataset", "n_frames", "kept", "split", "shard", "key")


@dataclass
class DataInputs:
    """Where the pipeline's output lives (a folder or a URI): shards per split, the kept keys per
    split (None: every sample of the split's shards, by its ``meta["split"]``), the manifest's kept
    clips, and where the statistics come from."""

    root: str
    shards: dict[str, list[str]]
    stats_path: str | None      # the statistics file; None: recomputed for the manifest's selection
    manifest_path: str | None
    keys: dict[str, frozenset[str] | None]
    clips: pd.DataFrame | None  # the manifest's kept clips

    def load_stats(self) -> dict[str, Any]:
        """The statistics of the training clips this input selects (see the module doc)."""
        if self.stats_path is not None:
            return load_stats(self.stats_path)
        assert self.clips is not None
        return selection_stats(self.root, self.clips, self.manifest_path)


class MissingShardsError(FileNotFoundError):
    """Shards the manifest names are not in the output folder."""


def find_inputs(root: str | Path, stats: str | Path | None = None, manifest: str | Path | None = None,
                allow_missing_shards: bool = False) -> DataInputs:
    """Locate ``root/shards/*.tar`` (or ``root/*.tar``), the statistics and the clips manifest.

    ``root``, ``stats`` and ``manifest`` may be paths or URIs. With a manifest (``manifest``, else
    ``root/manifests/clips.parquet`` when present) each split reads only the shards holding its
    kept clips, and only those clips; a shard it names that the folder lacks is a
    :class:`MissingShardsError` (a warning with ``allow_missing_shards``: the rest is read).
    Without one, a shard named for a split serves that split and an older, unnamed shard both,
    where the per-sample ``meta["split"]`` decides. Statistics: ``stats`` when given, else
    ``root/stats.json`` for the output's own manifest, else recomputed for the other manifest's
    selection.
    """
    root = str(root)
    shard_dir = storage.join(root, "shards") if storage.is_dir(storage.join(root, "shards")) else root
    paths = [storage.join(shard_dir, name) for name in storage.list_names(shard_dir, ".tar")]
    if not paths:
        raise FileNotFoundError(f"no shards (*.tar) found in {shard_dir}")
    own_manifest = storage.join(root, MANIFEST_FILE)
    manifest_path = str(manifest) if manifest else own_manifest
    stats_path = str(stats) if stats else None
    shards = {split: [p for p in paths if shard_split(p) in (split, None)] for split in SPLITS}
    keys: dict[str, frozenset[str] | None] = {split: None for split in SPLITS}
    clips = None
    if storage.is_file(manifest_path):
        clips = read_kept_clips(manifest_path)
        by_name = {p.rsplit("/", 1)[-1]: p for p in paths}
        named = sorted(set(clips["shard"].dropna()))
        missing = [n for n in named if n not in by_name]
        if missing:
            text = (f"{len(missing)} of the {len(named)} shards named in {manifest_path} are not in "
                    f"{shard_dir}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
            if not allow_missing_shards:
                raise MissingShardsError(f"{text} (set data.allow_missing_shards=true to train on the rest)")
            log.warning("%s; training on the rest (data.allow_missing_shards)", text)
        for split in SPLITS:
            in_split = clips[clips["split"] == split]
            shards[split] = [by_name[n] for n in sorted(set(in_split["shard"].dropna())) if n in by_name]
            if "key" in in_split:
                keys[split] = frozenset(in_split["key"].dropna().astype(str))
    elif manifest:
        raise FileNotFoundError(f"manifest not found: {manifest_path}")
    else:
        manifest_path = None
    if stats_path is None and (manifest_path is None or _same_place(manifest_path, own_manifest)):
        stats_path = storage.join(root, STATS_FILE)
    return DataInputs(root, shards, stats_path, manifest_path, keys, clips)


def _same_place(a: str, b: str) -> bool:
    return (a == b) if storage.has_scheme(a) or storage.has_scheme(b) else \
        os.path.abspath(a) == os.path.abspath(b)


def read_kept_clips(manifest: str | Path) -> pd.DataFrame:
    """The kept rows of a clips manifest (path or URI), with the columns the trainer uses."""
    names = storage.read_parquet_schema(str(manifest)).names
    table = storage.read_parquet(str(manifest), columns=[c for c in MANIFEST_COLUMNS if c in names])
    clips = table.to_pandas()
    return clips[clips["kept"].fillna(False).astype(bool)]


def selection_stats(root: str, clips: pd.DataFrame, manifest: str | None = None) -> dict[str, Any]:
    """``stats.json`` of the manifest's kept training clips, merged from the per-clip moments the
    job stored with each chunk (``root/moments/chunk-NNNNNN.parquet``); no shard is read."""
    train = clips[clips["split"] == "train"]
    if train.empty:
        raise StatsError(f"the manifest {manifest} keeps no training clip")
    by_chunk: dict[int, set[str]] = {}
    for shard, key in zip(train["shard"].astype(str), train["key"].astype(str)):
        match = SHARD_NAME_RE.match(shard)
        if match is None:
            raise StatsError(f"manifest {manifest}: {shard!r} is not a shard name of the job")
        by_chunk.setdefault(int(match["chunk"]), set()).add(key)
    moments = DatasetMoments()
    for chunk in sorted(by_chunk):
        location = storage.join(root, moments_name(chunk))
        if not storage.is_file(location):
            raise StatsError(
                f"the manifest {manifest} selects other clips than {root}'s own, and statistics for "
                f"that selection are merged from the per-clip moments the job stores, but "
                f"{location} is missing (an output written before the job stored moments). Pass "
                f"data.stats=PATH with statistics of this selection, or rebuild the shards into a "
                f"new output folder, which stores the moments.")
        found = merge_rows(storage.read_parquet(location), by_chunk[chunk])
        if found.n_clips != len(by_chunk[chunk]):
            raise StatsError(f"{location} holds moments of {found.n_clips} of the "
                             f"{len(by_chunk[chunk])} selected training clips of chunk {chunk}")
        moments.merge(found)
    document = moments.document()
    own = storage.join(root, STATS_FILE)
    if storage.is_file(own):  # which encoder made the features: the same for any selection
        encoder = json.loads(storage.read_bytes(own)).get("audio_feat", {}).get("encoder")
        if encoder is not None:
            document["audio_feat"]["encoder"] = encoder
    log.info("statistics recomputed for the %d training clips the manifest %s keeps",
             moments.n_clips, manifest)
    return document


def resolve_audio_dim(configured: int | None, stats_width: int | None) -> int:
    """``model.audio_dim``: the statistics' feature width unless set; set and different is an error."""
    if configured is None:
        if stats_width is None:
            raise FeatureWidthError("model.audio_dim is not set and the statistics record no audio "
                                    "feature width: set model.audio_dim")
        return int(stats_width)
    if stats_width is not None and int(configured) != stats_width:
        raise FeatureWidthError(f"the statistics describe {stats_width}-wide audio features but "
                                f"model.audio_dim is {configured}: leave model.audio_dim unset (null) "
                                f"to follow the data, or use features {configured} wide")
    return int(configured)


def dataset_multipliers(manifest_path: str | Path | pd.DataFrame | None,
                        weights: dict[str, float]) -> dict[str, float]:
    """Oversampling factor per dataset so each contributes its wanted share of training frames.

    ``weights`` are relative shares (a dataset not named gets 1.0; 0 leaves it out); empty means
    equal shares. Without a manifest the natural proportions are kept, unless weights were asked for.
    """
    if manifest_path is None:
        if weights:
            raise ValueError("data.dataset_weights needs the clips manifest to know each dataset's size")
        return {}
    clips = manifest_path if isinstance(manifest_path, pd.DataFrame) else read_kept_clips(manifest_path)
    frames = clips[clips["split"] == "train"].groupby("dataset")["n_frames"].sum()
    frames = frames[frames > 0]
    if frames.empty:
        return {}
    unknown = sorted(set(weights) - set(frames.index))
    if unknown:
        raise ValueError(f"data.dataset_weights names datasets absent from the training split: {unknown}")
    wanted = {d: float(weights.get(d, 1.0)) for d in frames.index}
    total_wanted, total_frames = sum(wanted.values()), float(frames.sum())
    if total_wanted <= 0:
        raise ValueError("data.dataset_weights leaves no dataset to train on")
    return {d: (wanted[d] / total_wanted) / (float(frames[d]) / total_frames) for d in frames.index}


class StreamHealth:
    """What a stream skipped, and a stop for a stream that makes no progress.

    Used as the WebDataset exception handler: an unreadable shard or sample is skipped and counted,
    a configuration error is raised. A stream that only fails, or that keeps opening shards without
    finding a single clip of its split (shards of another split only), stops with an error
    instead of spinning forever.
    """

    def __init__(self, max_consecutive_errors: int, max_visits_without_clip: int):
        self.errors = 0
        self.consecutive_errors = 0
        self.visits_without_clip = 0
        self.max_consecutive_errors = max_consecutive_errors
        self.max_visits_without_clip = max_visits_without_clip

    def handler(self, exn: Exception) -> bool:
        if isinstance(exn, (FeatureWidthError, DataStreamError)):
            raise exn
        self.errors += 1
        self.consecutive_errors += 1
        if self.errors <= 10 or self.errors % 100 == 0:
            log.warning("skipped unreadable shard data (%d so far): %s: %s",
                        self.errors, type(exn).__name__, str(exn)[:300])
        if self.consecutive_errors >= self.max_consecutive_errors:
            raise DataStreamError(f"{self.consecutive_errors} shard or sample errors in a row and no "
                                  f"readable sample; last: {type(exn).__name__}: {exn}")
        return True

    def count_visits(self, shards: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass shard urls through, counting the visits since the last clip."""
        for shard in shards:
            self.visits_without_clip += 1
            if self.visits_without_clip > self.max_visits_without_clip:
                raise DataStreamError(f"{self.max_visits_without_clip} shard visits without a clip "
                                      "of the wanted split: these shards hold none (check meta['split'])")
            yield shard

    def decoded(self) -> None:
        self.consecutive_errors = 0

    def found_clip(self) -> None:
        self.visits_without_clip = 0


@dataclass
class Clip:
    key: str
    motion: np.ndarray   # (T, 70) float32, normalised
    audio: np.ndarray    # (T, D) float16, as stored (normalised on the training device)
    dataset: str

    def __len__(self) -> int:
        return self.motion.shape[0]


def decode_clip(raw: dict[str, Any], split: str, normalizer: Normalizer, audio_dim: int,
                keys: frozenset[str] | None = None) -> Clip | None:
    """One tar sample -> a Clip of the wanted split, or None (not decoded) for another split or,
    with ``keys`` (the manifest's kept clips of the split), a sample the manifest does not keep."""
    key = raw.get("__key__", "?")
    if keys is not None and key not in keys:
        return None
    if "json" not in raw:
        raise SampleError(f"sample {key}: no json member")
    meta = json.loads(raw["json"])
    if "split" not in meta:
        raise SampleError(f"sample {key}: meta has no 'split'")
    if meta["split"] != split:
        return None
    sample = decode_sample(raw, with_audio=False)
    motion = motion_to_vector(sample["motion"])
    audio = sample["audio_feat"]
    if audio.ndim != 2 or audio.shape[1] != audio_dim:
        raise FeatureWidthError(f"sample {key} has audio features of shape {audio.shape}; the model "
                                f"expects width {audio_dim} (model.audio_dim)")
    if audio.shape[0] != motion.shape[0] or motion.shape[0] < 1:
        raise SampleError(f"sample {key}: {motion.shape[0]} motion frames, {audio.shape[0]} audio frames")
    if not np.isfinite(motion).all():
        raise SampleError(f"sample {key}: motion holds NaN or Inf")
    return Clip(key, normalizer.normalize(motion), audio.astype(np.float16, copy=False),
                str(meta.get("dataset", "unknown")))


@dataclass(frozen=True)
class WindowSpec:
    clip: Clip
    start: int      # first frame of the current part
    n_cur: int      # valid current frames (w_cur unless truncated or at the clip's end)
    first: bool     # start == 0: no previous context


class WindowSampler:
    """Where windows fall in a clip: random (training) or tiled like inference (validation)."""

    def __init__(self, w_pre: int, w_cur: int, truncate_prob: float = 0.35, min_cur: int = 5,
                 first_window_prob: float = 0.15):
        self.w_pre, self.w_cur = w_pre, w_cur
        self.truncate_prob, self.min_cur = truncate_prob, min(min_cur, w_cur)
        self.first_window_prob = first_window_prob

    def draw(self, clip: Clip, rng: np.random.Generator) -> WindowSpec:
        n_frames = len(clip)
        if n_frames <= self.w_pre or rng.random() < self.first_window_prob:
            start = 0
        else:
            start = int(rng.integers(self.w_pre, max(self.w_pre, n_frames - self.w_cur) + 1))
        n_cur = min(self.w_cur, n_frames - start)
        if n_cur > self.min_cur and rng.random() < self.truncate_prob:
            n_cur = int(rng.integers(self.min_cur, n_cur))
        return WindowSpec(clip, start, n_cur, start == 0)

    def tile(self, clip: Clip) -> list[WindowSpec]:
        n_frames = len(clip)
        return [WindowSpec(clip, s, min(self.w_cur, n_frames - s), s == 0)
                for s in range(0, n_frames, self.w_cur)]


def assemble_batch(specs: list[WindowSpec], w_pre: int, w_cur: int) -> dict[str, torch.Tensor]:
    """Copy each window's frames from its clip into zero-padded batch arrays.

    ``motion`` (B, L, 70) float32 normalised; ``audio`` (B, L, D) float16 raw; ``valid`` (B, L)
    bool; ``first`` (B,) bool, with L = w_pre + w_cur; ``keys`` the clip of each window.
    """
    window = w_pre + w_cur
    audio_dim = specs[0].clip.audio.shape[1]
    motion = np.zeros((len(specs), window, VECTOR_DIM), np.float32)
    audio = np.zeros((len(specs), window, audio_dim), np.float16)
    valid = np.zeros((len(specs), window), bool)
    first = np.zeros(len(specs), bool)
    for i, spec in enumerate(specs):
        lo = spec.start if spec.first else spec.start - w_pre
        offset = w_pre if spec.first else 0
        hi = spec.start + spec.n_cur
        span = slice(offset, offset + hi - lo)
        motion[i, span] = spec.clip.motion[lo:hi]
        audio[i, span] = spec.clip.audio[lo:hi]
        valid[i, span] = True
        first[i] = spec.first
    return {"motion": torch.from_numpy(motion), "audio": torch.from_numpy(audio),
            "valid": torch.from_numpy(valid), "first": torch.from_numpy(first),
            "keys": [spec.clip.key for spec in specs]}


@dataclass
class ModelBatch:
    x0: torch.Tensor      # (B, L, 70) normalised clean motion, zero where invalid
    audio: torch.Tensor   # (B, L, D) normalised audio, zero where invalid
    valid: torch.Tensor   # (B, L) bool
    first: torch.Tensor   # (B,) bool


def to_model_inputs(batch: dict[str, torch.Tensor], normalizer: Normalizer,
                    device: torch.device | str) -> ModelBatch:
    valid = batch["valid"].to(device, non_blocking=True)
    audio = normalizer.normalize_audio(batch["audio"].to(device, non_blocking=True).float())
    return ModelBatch(x0=batch["motion"].to(device, non_blocking=True),
                      audio=audio * valid[..., None], valid=valid,
                      first=batch["first"].to(device, non_blocking=True))


def wanted_member(name: str) -> bool:
    """Tar members the trainer reads: everything but the raw audio (features are cached)."""
    return not name.endswith(".audio.flac")


def open_shards(urls: Iterator[dict[str, Any]], handler: Any) -> Iterator[dict[str, Any]]:
    """Open each shard (a path, or an object-store URI streamed through ``shards.storage``)."""
    for item in urls:
        url = item["url"]
        try:
            stream = storage.open_stream(url) if storage.has_scheme(url) else open(url, "rb")
        except Exception as exn:  # noqa: BLE001 - the handler decides: skip and count, or raise
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break
        try:
            yield {**item, "stream": stream}
        finally:
            stream.close()


def shard_samples(urls: Iterator[dict[str, Any]], handler: Any) -> Iterator[dict[str, Any]]:
    """Tar samples ({"__key__", member: bytes}) of the shards, without the raw audio."""
    files = tar_file_expander(open_shards(urls, handler), handler=handler, select_files=wanted_member)
    return group_by_keys(files, handler=handler)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


Position = tuple[int, int]  # (shard visit, windows drawn in that visit) after a stream's last batch


def stream_of(loader_worker: int, num_workers: int, consumed_batches: int) -> int:
    """The stream a loader worker plays after ``consumed_batches``: the DataLoader takes batches
    from its workers in turn, starting with worker 0, and the next batch is due from stream
    ``consumed % num_workers``."""
    return (loader_worker + consumed_batches) % num_workers


class WindowStream(IterableDataset):
    """Batches of training (``resample=True``, endless) or validation (one pass) windows.

    ``positions``: where each training stream starts, one per loader worker (the last consumed
    batch's ``position`` for that stream; None: at the beginning). Each training batch carries
    ``stream`` and ``position``.
    """

    def __init__(self, urls: list[str], normalizer: Normalizer, model_cfg: ModelConfig,
                 data_cfg: Any, split: str, seed: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, resample: bool = True, consumed_batches: int = 0,
                 multipliers: dict[str, float] | None = None, split_by_rank: bool = False,
                 keys: frozenset[str] | None = None, positions: list[Position] | None = None):
        if not urls:
            raise FileNotFoundError(f"no shards hold '{split}' clips")
        self.urls = list(urls)
        self.normalizer = normalizer
        self.model_cfg = model_cfg
        self.data_cfg = data_cfg
        self.split = split
        self.seed = seed
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.resample = resample
        self.consumed_batches = consumed_batches
        self.positions = positions
        self.multipliers = multipliers or {}
        self.split_by_rank = split_by_rank
        self.keys = keys  # the manifest's kept clips of this split; None: every sample of the split
        self.sampler = WindowSampler(model_cfg.w_pre, model_cfg.w_cur, data_cfg.truncate_prob,
                                     data_cfg.min_cur, data_cfg.first_window_prob)

    def rank_urls(self) -> list[str]:
        """This rank's shards: a disjoint share when the shards are known to hold this split's
        clips (from the manifest) and there are enough to go round; otherwise all of them."""
        if self.split_by_rank and len(self.urls) >= self.world_size:
            return self.urls[self.rank::self.world_size]
        return self.urls

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader_worker, num_workers = _worker()
        if not self.resample:
            yield from self._validation_pass(loader_worker, num_workers)
            return
        stream = stream_of(loader_worker, num_workers, self.consumed_batches)
        start = self.positions[stream] if self.positions and stream < len(self.positions) else (0, 0)
        urls = self.rank_urls()
        # A shard holding clips of this split is missed 20 * n visits running with odds below
        # e^-20, so more visits than that mean there is none.
        health = StreamHealth(self.data_cfg.max_consecutive_errors, 20 * len(urls) + 50)
        group: list[WindowSpec] = []
        for spec, position in self._positioned_windows(urls, stream, start, health):
            group.append(spec)
            if len(group) == self.batch_size:
                batch = assemble_batch(group, self.model_cfg.w_pre, self.model_cfg.w_cur)
                batch.update(errors=health.errors, worker=stream, stream=stream, position=position)
                yield batch
                group = []

    def _positioned_windows(self, urls: list[str], stream: int, start: Position,
                            health: StreamHealth) -> Iterator[tuple[WindowSpec, Position]]:
        """Windows of visit after visit, each with the stream's position once it is drawn."""
        visit, skip = start
        while True:
            rng = np.random.default_rng([self.seed, self.rank, stream, visit])
            url = urls[int(rng.integers(len(urls)))]
            for drawn, spec in enumerate(self._visit_windows(url, rng, health), start=1):
                if drawn > skip:
                    yield spec, (visit, drawn)
            visit, skip = visit + 1, 0

    def _visit_windows(self, url: str, rng: np.random.Generator,
                       health: StreamHealth) -> Iterator[WindowSpec]:
        """One visit to a shard: its clips, shuffled, through the window pool until each clip's
        budget is spent. Everything random comes from ``rng``."""
        samples = shard_samples(health.count_visits(iter([{"url": url}])), handler=health.handler)
        shuffle = wds.shuffle(self.data_cfg.clip_shuffle, initial=self.data_cfg.clip_shuffle,
                              rng=random.Random(int(rng.integers(2**62))))
        yield from self._pooled_windows(shuffle(self._clips(samples, health)), rng)

    def _validation_pass(self, loader_worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """Every validation clip of the shards once, tiled as inference does."""
        health = StreamHealth(self.data_cfg.max_consecutive_errors, 20 * len(self.urls) + 50)
        urls = ({"url": url} for url in self.urls[loader_worker::num_workers])
        clips = self._clips(shard_samples(urls, handler=health.handler), health)
        specs = (spec for clip in clips for spec in self.sampler.tile(clip))
        for group in _groups(specs, self.batch_size):
            batch = assemble_batch(group, self.model_cfg.w_pre, self.model_cfg.w_cur)
            batch.update(errors=health.errors, worker=loader_worker)
            yield batch

    def _clips(self, samples: Iterator[dict[str, Any]], health: StreamHealth) -> Iterator[Clip]:
        for raw in samples:
            try:
                clip = decode_clip(raw, self.split, self.normalizer, self.model_cfg.audio_dim, self.keys)
            except Exception as exn:  # noqa: BLE001 - the handler decides: skip and count, or raise
                exn.args = exn.args + (raw.get("__url__"),)
                health.handler(exn)
                continue
            health.decoded()
            if clip is not None:
                health.found_clip()
                yield clip

    def _budget(self, clip: Clip, rng: np.random.Generator) -> int:
        """Windows to draw from one visit to a clip (stochastically rounded; 0 drops the dataset)."""
        mult = self.multipliers.get(clip.dataset, 1.0)
        if mult <= 0:
            return 0
        expected = self.data_cfg.coverage * len(clip) / self.model_cfg.window * mult
        return max(1, int(expected) + int(rng.random() < expected - int(expected)))

    def _pooled_windows(self, clips: Iterator[Clip], rng: np.random.Generator) -> Iterator[WindowSpec]:
        pool: list[list[Any]] = []  # [clip, windows left]
        clips = iter(clips)
        exhausted = False
        while True:
            while not exhausted and len(pool) < self.data_cfg.pool_clips:
                clip = next(clips, None)
                if clip is None:
                    exhausted = True
                elif (budget := self._budget(clip, rng)) > 0:
                    pool.append([clip, budget])
            if not pool:
                return
            i = int(rng.integers(len(pool)))
            yield self.sampler.draw(pool[i][0], rng)
            pool[i][1] -= 1
            if pool[i][1] == 0:
                pool[i] = pool[-1]
                pool.pop()


def _groups(specs: Iterator[WindowSpec], size: int) -> Iterator[list[WindowSpec]]:
    """Consecutive groups of ``size`` windows, the last one possibly shorter."""
    group: list[WindowSpec] = []
    for spec in specs:
        group.append(spec)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def make_loader(stream: WindowStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over already-batched windows. Its own generator keeps the global RNG untouched.

    With worker processes, torch's tensor sharing is switched to ``file_system`` (process-wide):
    receiving a batch through named shared-memory files costs the main process about a third of
    what passing file descriptors does, which decides whether two loader workers keep up.
    """
    if num_workers:
        torch.multiprocessing.set_sharing_strategy("file_system")
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0),
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)


def first_clip(urls: list[str], split: str, normalizer: Normalizer, audio_dim: int,
               max_consecutive_errors: int = 1000, keys: frozenset[str] | None = None) -> Clip:
    """The first readable clip of a split, read before training so bad inputs fail before step 1."""
    health = StreamHealth(max_consecutive_errors, len(urls))
    samples = wds.DataPipeline(wds.SimpleShardList(urls),
                               functools.partial(shard_samples, handler=health.handler))
    for raw in samples:
        try:
            clip = decode_clip(raw, split, normalizer, audio_dim, keys)
        except Exception as exn:  # noqa: BLE001 - configuration errors re-raise in the handler
            health.handler(exn)
            continue
        if clip is not None:
            return clip
    raise DataStreamError(f"no readable '{split}' clip in {len(urls)} shard(s) "
                          f"({health.errors} unreadable samples or shards)")


def validation_batches(urls: list[str], normalizer: Normalizer, model_cfg: ModelConfig, data_cfg: Any,
                       seed: int, n_batches: int, batch_size: int,
                       keys: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """``n_batches`` batches of validation windows drawn from the whole validation split.

    One pass tiles every validation clip as inference does; a reservoir sample with a fixed seed
    keeps ``n_batches * batch_size`` of the windows, each equally likely whichever shard it is in,
    so the validation loss describes the split rather than its first shards. Kept in stream order.
    """
    wanted = n_batches * batch_size
    if not urls or wanted <= 0:
        return []
    stream = WindowStream(urls, normalizer, model_cfg, data_cfg, "val", seed, 1, resample=False, keys=keys)
    rng = np.random.default_rng([seed, 7])
    reservoir: list[tuple[int, dict[str, Any]]] = []  # (position in the stream, one-window batch)
    for position, window in enumerate(stream):
        if len(reservoir) < wanted:
            reservoir.append((position, window))
        elif (slot := int(rng.integers(position + 1))) < wanted:
            reservoir[slot] = (position, window)
    windows = [w for _, w in sorted(reservoir, key=lambda item: item[0])]
    batches = []
    for start in range(0, len(windows), batch_size):
        group = windows[start:start + batch_size]
        batch: dict[str, Any] = {k: torch.cat([w[k] for w in group]) for k in ("motion", "audio", "valid", "first")}
        batch["keys"] = [k for w in group for k in w["keys"]]
        batches.append(batch)
    return batches
