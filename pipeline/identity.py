"""The identity pass: which videos show the same person, before any chunk is split.

The split (``shards.split``) must be known when a chunk's shards are written, yet grouping by face
needs every video. So before the chunks run, each video not yet seen gets ``identity.frames``
face embeddings (frames spread over the video, the largest face of each, detected as the face
stage detects), the new videos are grouped (``shards.identity.assign_groups``) against those
grouped before, and the result is stored in ``OUT/identity/identity-NNNN.parquet``, one file per
pass that found new videos. A re-run reads every file: videos keep their group however the input
grows, so shards already written never disagree with later ones. On Ray the CPU workers compute
the embeddings, ``work.videos_per_chunk`` videos a call, with the detector and embedder their face
stage has loaded anyway (``CpuWorker.identity_embeddings``); otherwise this process does.

A video with a ``speaker`` is embedded too: unlabelled videos of the same face join its speaker's
group. A video that cannot be read, or shows no face, keeps its own group (``video:<id>``). A video
whose embedding failed for infrastructure reasons (a worker that died twice, a read that timed
out: ``pipeline.faults``) is not stored and gets no group: its chunk waits for the next run.

A video alone after the grouping whose face lies about as near to groups on both sides of the
split (``shards.split.unsure_videos``) is left out of both: its clips are rejected with
``identity/ambiguous_identity`` before any model sees them (``identity.ambiguous: keep`` keeps
it in its group). The decision is stored with its group and kept on re-runs.

Before anything is stored, ``pipeline.identity_guard`` logs the group size distribution and stops
the run (``GroupShareError``, nothing written) when one face group holds more than
``identity.max_group_share`` of at least ``identity.guard_min_videos`` videos.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from models.face_detectors import make_detector
from models.face_identity import BACKEND_MODELS, FaceEmbedder, identity_threshold
from pipeline.decode import iter_video_chunks
from pipeline.faults import transient_kind
from pipeline.identity_guard import check_group_share
from pipeline.inputs import InputError, InputVideo
from pipeline.outdir import OutputDir
from pipeline.probe import probe
from pipeline.stages.faces import embedder_for, working_size
from shards.format import FPS
from shards.identity import group_videos
from shards.split import split_group, unsure_videos

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
IDENTITY_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("group", pa.string()),              # the split group (shards.split.split_group)
    ("backend", pa.string()),            # embedding model, e.g. dlib_resnet128
    ("n_faces", pa.int32()),             # embeddings stored (frames with a face)
    ("embeddings", pa.list_(pa.float32())),  # n_faces x D, flattened
    ("error", pa.string()),              # why the video has no embedding, else null
    ("left_out", pa.string()),           # why the video is in neither split, else null
])
AMBIGUOUS = ("leave_out", "keep")  # identity.ambiguous: what becomes of a video the split cannot place


@dataclass
class Identities:
    """What the identity pass decided: video id -> split group, and video id -> why it is in
    neither split (its clips are rejected with ``identity/ambiguous_identity``)."""

    groups: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


NO_EMBEDDING = np.zeros((0, 1), np.float32)  # a video with no face embedded
RETRYABLE = "retryable: "  # the start of the error of a video to embed again next run (not stored)


def identity_name(number: int) -> str:
    return f"{IDENTITY_DIR}/identity-{number:04d}.parquet"


def read_identities(out: OutputDir) -> list[dict[str, Any]]:
    """Every stored row, oldest file first."""
    rows = []
    for name in sorted(n for n in out.list(IDENTITY_DIR) if n.endswith(".parquet")):
        rows += out.read_parquet(name).to_pylist()
    return rows


def _embeddings(row: Mapping[str, Any]) -> np.ndarray:
    values = np.asarray(row["embeddings"] or [], np.float32)
    return values.reshape(int(row["n_faces"]), -1) if row["n_faces"] else NO_EMBEDDING


# sources -> one (embeddings, error) per source, in order
EmbedMany = Callable[[list[str]], list[tuple[np.ndarray, str | None]]]


class VideoEmbedder:
    """Embeds the largest face on a few frames of a video (one set of models, many videos); given a
    ``detector`` and ``embedder`` already loaded (a CPU worker's face stage), it reuses them."""

    def __init__(self, cfg: Mapping[str, Any], detector=None, embedder: FaceEmbedder | None = None):
        self.embedder: FaceEmbedder | None = embedder if embedder is not None else embedder_for(cfg)
        faces = cfg["faces"]
        self.detector = detector if detector is not None else make_detector(
            faces["backend"], weights_dir=cfg["weights"].get("dir"), **dict(faces.get("detector_options") or {}))
        self.n_frames = int(cfg["identity"]["frames"])
        self.min_face = float(cfg["filters"]["faces"]["min_face_px"])
        self.max_side = int(cfg["decode"]["max_side"])
        self.timeout_s = float(cfg["decode"]["timeout_s"])
        self.probe_timeout_s = float(cfg["probe"]["timeout_s"])

    def __call__(self, source: str) -> tuple[np.ndarray, str | None]:
        """((K, D) embeddings, None) or (no embeddings, the reason)."""
        try:
            info = probe(source, timeout_s=self.probe_timeout_s)
            size = working_size(info.width, info.height, info.rotation, self.max_side)
            found = []
            for k in range(self.n_frames):
                at = info.duration_s * (k + 0.5) / self.n_frames
                frame = next(iter(iter_video_chunks(source, at, at + 1.0 / FPS, fps=FPS, chunk_frames=1,
                                                    size=size, timeout_s=self.timeout_s)))[0]
                dets = self.detector.detect(frame, self.min_face)
                sides = np.maximum(dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1])
                if len(dets) and sides.max() >= self.min_face:
                    found.append(self.embedder.embed(frame, dets[int(np.argmax(sides)), :4]))
        except Exception as exc:  # noqa: BLE001 - an unreadable video keeps its own group
            kind = transient_kind(exc)
            return NO_EMBEDDING, (f"{RETRYABLE}{kind}: " if kind else "") + f"{type(exc).__name__}: {exc}"
        if not found:
            return NO_EMBEDDING, "no face"
        return np.stack(found), None

    def many(self, sources: Sequence[str]) -> list[tuple[np.ndarray, str | None]]:
        return [self(s) for s in sources]


def embed_on_workers(workers: Sequence[Any], per_call: int, ready_timeout_s: float = 120.0) -> EmbedMany:
    """``embed_many`` on CPU worker actors: ``per_call`` videos a call, one call in flight per
    worker (a worker that dies takes no other batch's reply with it). A batch whose worker died is
    tried once more on the next free worker, once the dead one has restarted; if it fails again,
    its videos are recorded as not embedded and keep their own groups, as unreadable ones do."""
    import ray
    from ray.exceptions import RayActorError

    def ready(worker) -> bool:
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(worker.__ray_ready__.remote())
                return True
            except RayActorError:
                time.sleep(0.5)
        return False

    def embed_many(sources: list[str]) -> list[tuple[np.ndarray, str | None]]:
        batches = [sources[i:i + per_call] for i in range(0, len(sources), per_call)]
        results: list[list | None] = [None] * len(batches)
        tries = [0] * len(batches)
        waiting, free, in_flight = list(range(len(batches))), list(workers), {}
        while waiting or in_flight:
            while free and waiting:
                worker, i = free.pop(0), waiting.pop(0)
                tries[i] += 1
                in_flight[worker.identity_embeddings.remote(batches[i])] = (worker, i)
            if not in_flight:  # every worker is gone: the rest cannot be embedded
                for i in waiting:
                    results[i] = [(NO_EMBEDDING, f"{RETRYABLE}worker_died: no worker left")] * len(batches[i])
                break
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            worker, i = in_flight.pop(ref)
            try:
                results[i] = ray.get(ref)
                free.append(worker)
            except RayActorError as exc:
                if tries[i] < 2:
                    waiting.insert(0, i)
                else:
                    log.warning("identity pass: a worker died twice on %d videos; they wait for the next run",
                                len(batches[i]))
                    results[i] = [(NO_EMBEDDING, f"{RETRYABLE}worker_died: {type(exc).__name__}")] * len(batches[i])
                if ready(worker):
                    free.append(worker)
        return [result for batch in results for result in batch]

    return embed_many


def identity_groups(cfg: Mapping[str, Any], out: OutputDir, videos: Sequence[InputVideo],
                    embed_many: EmbedMany | None = None) -> Identities:
    """The split groups of ``videos`` (and of every video grouped before), embedding and grouping
    those not stored yet with ``embed_many`` (default: a ``VideoEmbedder`` in this process), and
    the videos left out of both splits; nothing when ``identity.backend`` is ``none``."""
    identity = cfg["identity"]
    if identity["backend"] in ("none", None):
        return Identities()
    ambiguous = identity.get("ambiguous", "leave_out")
    if ambiguous not in AMBIGUOUS:
        raise InputError(f"identity.ambiguous must be one of {', '.join(AMBIGUOUS)}, got {ambiguous!r}")
    stored = read_identities(out)
    done = Identities({row["video_id"]: row["group"] for row in stored},
                      {row["video_id"]: row["left_out"] for row in stored if row.get("left_out")})
    new = sorted({v.video_id: v for v in videos if v.video_id not in done.groups}.items())
    if not new:
        return done
    log.info("identity pass: embedding faces of %d new videos", len(new))
    sources = [v.source for _, v in new]
    results = embed_many(sources) if embed_many is not None else VideoEmbedder(cfg).many(sources)
    if len(results) != len(sources):
        raise RuntimeError(f"identity pass: {len(results)} results for {len(sources)} videos")
    backend = BACKEND_MODELS[identity["backend"]]
    threshold = identity_threshold(identity["backend"], identity.get("threshold"))
    known = {row["video_id"]: (row["group"], _embeddings(row)) for row in stored}
    labelled = {vid: (split_group(v.speaker, vid), emb) for (vid, v), (emb, _) in zip(new, results) if v.speaker}
    unlabelled = {vid: emb for (vid, v), (emb, _) in zip(new, results) if not v.speaker}
    grouping = group_videos(unlabelled, {**known, **labelled}, threshold)
    grouped, retry = dict(done.groups), set()
    for (vid, v), (emb, error) in zip(new, results):
        if error and error.startswith(RETRYABLE):
            log.warning("identity pass: %s not grouped (%s); its chunk waits for the next run", v.source, error)
            retry.add(vid)
            continue
        grouped[vid] = labelled[vid][0] if v.speaker else grouping.groups[vid] if len(emb) else split_group(None, vid)
    check_group_share(cfg, grouped)  # before anything is written
    # (a video to embed again has no embedding, so no rivals)
    left_out = {} if ambiguous == "keep" else unsure_videos(grouping.rivals, grouped, float(cfg["split"]["val_fraction"]))
    if left_out:
        log.info("identity pass: %d of %d new videos left out of both splits: their faces lie about as near "
                 "to groups on both sides (identity.ambiguous=keep keeps them)", len(left_out), len(new))
    rows = [{"video_id": vid, "source": v.source, "group": grouped[vid], "backend": backend,
             "n_faces": len(emb), "embeddings": emb.reshape(-1).tolist() if len(emb) else [], "error": error,
             "left_out": left_out.get(vid)}
            for (vid, v), (emb, error) in zip(new, results) if vid not in retry]
    result = Identities(grouped, {**done.left_out, **left_out})
    if not rows:
        return result
    number = len([n for n in out.list(IDENTITY_DIR) if n.endswith(".parquet")])
    out.write_parquet(identity_name(number), pa.Table.from_pylist(rows, schema=IDENTITY_SCHEMA))
    return result
