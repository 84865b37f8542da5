"""Face stage: track the dominant face through the clip, check count and size, and crop it.

Frames are decoded in bounded chunks at a working size (longer side at most ``decode.max_side``)
to track, and then, only for clips that pass, cut into the two crops the models need, the
LivePortrait crop (256x256) and the SyncNet whole-face crop (224x224). A clip whose decoded frames
fit in ``decode.reuse_frames_mb`` is decoded once and its frames kept for the crops; a longer one
is streamed twice, so memory stays bounded by that setting and the clip length, never by the
video's resolution. Only the crops leave the stage, with what placed the LivePortrait crop
(``crop_backend``: the landmark backend, or ``detector_box``) and the clip's face identity
embedding (``identity.frames`` frames spread over the clip, on the tracked box, averaged), which
the audit compares across splits.
"""
from __future__ import annotations

import numpy as np

from filters.cheap import check_faces
from pipeline.clip import Clip
from pipeline.decode import DecodeError, iter_video_chunks
from models.face_identity import FaceEmbedder, make_embedder
from models.weights import weight_id
from pipeline.faces import (LIVEPORTRAIT_SIZE, SYNCNET_SIZE, FaceTracker, crop_liveportrait,
                            crop_syncnet)
from pipeline.stages.base import Filter
from shards.format import FPS

# Tracker verdicts that leave no usable face track, whatever the filter mode.
NO_TRACK = ("no_face", "track_lost")


def working_size(width: int, height: int, rotation: int, max_side: int) -> tuple[int, int]:
    """(width, height) of upright frames scaled so the longer side is at most ``max_side`` (even)."""
    if rotation in (90, 270):
        width, height = height, width
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def embedder_for(cfg) -> FaceEmbedder | None:
    """The run's identity embedder (``identity.backend`` and ``identity.weights``)."""
    ident = cfg["identity"]
    return make_embedder(ident["backend"], ident.get("weights"), cfg["weights"].get("dir"))


class FaceStage(Filter):
    name = "faces"
    sections = ("faces",)

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = dict(cfg["faces"])
        # The size threshold is this filter's (filters.faces.min_face_px), so the tracker takes
        # every size and reports it.
        self.tracker = FaceTracker(backend=opts.pop("backend"), min_face=0.0,
                                   weights_dir=cfg["weights"].get("dir"), **opts)
        self.decode = cfg["decode"]
        self.embedder = embedder_for(cfg)
        self.identity_frames = int(cfg["identity"]["frames"])

    def describe(self) -> dict[str, str]:
        """The landmark and identity models (the detector is OpenCV's or recorded by its file)."""
        parts = [(m.name, m.model_path) for m in [self.tracker.landmarker] if m is not None]
        if self.embedder is not None:
            parts += [(self.embedder.name, path) for path in self.embedder.model_paths]
        if not parts:
            return {}
        return {"model_id": "+".join(dict.fromkeys(name for name, _ in parts)),
                "weight_id": "+".join(weight_id(path)[:16] for _, path in parts)}

    def size(self, clip: Clip) -> tuple[int, int]:
        info = clip.info
        return working_size(info.width, info.height, info.rotation, int(self.decode["max_side"]))

    def frames(self, clip: Clip):
        return iter_video_chunks(clip.source, clip.start_s, clip.end_s, fps=FPS,
                                 chunk_frames=int(self.decode["chunk_frames"]), size=self.size(clip),
                                 timeout_s=float(self.decode["timeout_s"]))

    def process(self, clip: Clip) -> None:
        try:
            self.track_and_crop(clip)
        except DecodeError as exc:
            self.media_rejection(clip, exc)

    def decoded_once(self, clip: Clip) -> list[np.ndarray] | None:
        """The clip's frames in chunks, when they fit in ``decode.reuse_frames_mb`` (else None)."""
        width, height = self.size(clip)
        if clip.n_frames * width * height * 3 > float(self.decode["reuse_frames_mb"]) * 2**20:
            return None
        return list(self.frames(clip))

    def track_and_crop(self, clip: Clip) -> None:
        chunks = self.decoded_once(clip)
        track = self.tracker.track(chunks if chunks is not None else self.frames(clip))
        clip.scores["face_count"] = float(track.n_faces_max)
        if track.face_size is not None and np.isfinite(track.face_size):
            clip.scores["face_size"] = float(track.face_size)
        if not track.ok and track.reason in NO_TRACK:
            clip.reject(self.name, track.reason)
            return
        limits = self.settings("faces")
        self.verdict(clip, "faces", check_faces(int(track.n_faces_max), float(track.face_size or 0.0),
                                                int(limits["max_faces"]), float(limits["min_face_px"])))
        if not clip.kept:
            return
        n = clip.n_frames
        lp = np.empty((n, LIVEPORTRAIT_SIZE, LIVEPORTRAIT_SIZE, 3), np.uint8)
        sync = np.empty((n, SYNCNET_SIZE, SYNCNET_SIZE, 3), np.uint8)
        embed_at = set(np.linspace(0, n - 1, self.identity_frames).round().astype(int).tolist()) if self.embedder else set()
        embeddings = []
        start = 0
        for chunk in chunks if chunks is not None else self.frames(clip):
            stop = start + len(chunk)
            if stop > n:
                raise ValueError(f"decoded more than the clip's {n} frames")
            part = track.slice(start, stop)
            lp[start:stop] = crop_liveportrait(chunk, part)
            sync[start:stop] = crop_syncnet(chunk, part)
            embeddings += [self.embedder.embed(chunk[i - start], track.boxes[i])
                           for i in sorted(embed_at) if start <= i < stop]
            start = stop
        if start != n:
            raise ValueError(f"decoded {start} frames, expected {n}")
        clip.lp_crops, clip.sync_crops = lp, sync
        clip.crop_backend = track.crop_backend
        if embeddings:
            clip.face_embedding = np.mean(embeddings, axis=0).astype(np.float32)
            clip.identity_backend = self.embedder.name
