"""The one contract every stage follows, and the helpers filters share.

A stage is built once per worker with the whole run config (loading its model there) and then
called on batches of clips: ``stage(clips) -> clips``. It skips clips already rejected, and any
exception raised for one clip becomes that clip's rejection (stage, ``"error"``, the error text),
so one bad input never stops the batch; except an infrastructure failure (out of memory, a
storage or network error, a timeout: ``pipeline.faults``), which says nothing about the clip and
is raised as ``TransientError`` for the scheduler to retry. Stages know nothing of Ray.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from pipeline.clip import Clip
from pipeline.faults import raise_if_transient

DROP, SCORE = "drop", "score"


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:2000] + "..."


class Stage:
    """Base class: override ``process`` (one clip) or ``__call__`` (a whole batch)."""

    name = "stage"

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg

    def __call__(self, clips: list[Clip]) -> list[Clip]:
        for clip in clips:
            if not clip.kept:
                continue
            start = time.perf_counter()
            try:
                self.process(clip)
            except Exception as exc:  # noqa: BLE001 - any other failure is this clip's rejection
                raise_if_transient(exc)
                clip.reject(self.name, "error", error_text(exc))
            clip.add_time(self.name, time.perf_counter() - start, clip.n_frames if not clip.is_video else 0)
        return clips

    def process(self, clip: Clip) -> None:
        """Work on one clip in place: add fields, scores, or a rejection."""
        raise TypeError(f"{type(self).__name__} must override process() or __call__()")

    def media_rejection(self, clip: Clip, exc: Exception) -> None:
        """Reject ``clip`` for a media reader's error (``MediaError``: reason and message), unless
        the error is the infrastructure's (a read that timed out, a network error underneath)."""
        raise_if_transient(exc)
        clip.reject(self.name, exc.reason, exc.message or str(exc))

    def describe(self) -> dict[str, Any]:
        """Model id and weight id of the stage's model, if it has one."""
        return {}


class Filter(Stage):
    """A stage that scores clips and drops those past a threshold, unless in score-only mode.

    ``filters.<section>.mode: score`` records every score and keeps the clip, so thresholds can be
    changed later from the manifest without running any model again.
    """

    sections: tuple[str, ...] = ()

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.drops: dict[str, bool] = {}
        for section in self.sections:
            mode = cfg["filters"][section].get("mode", DROP)
            if mode not in (DROP, SCORE):
                raise ValueError(f"filters.{section}.mode must be {DROP!r} or {SCORE!r}, got {mode!r}")
            self.drops[section] = mode == DROP

    def settings(self, section: str) -> Mapping[str, Any]:
        return self.cfg["filters"][section]

    def verdict(self, clip: Clip, section: str, reason: str | None, detail: str | None = None) -> None:
        """Reject the clip for ``reason`` (when not None) unless ``section`` only scores."""
        if reason is not None and self.drops[section]:
            clip.reject(self.name, reason, detail)
