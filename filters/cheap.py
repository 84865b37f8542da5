"""Cheap checks that run before any model: clip duration, audio present and not silent, faces.

Each check returns the rejection reason, or None when the clip passes; the scores themselves are
recorded by the calling stage whatever the verdict.
"""
from __future__ import annotations

import numpy as np

SILENCE_DB = -120.0  # the level reported for digital silence (RMS of exactly zero)


def audio_rms_db(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (float samples in [-1, 1])."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.size == 0:
        return SILENCE_DB
    rms = float(np.sqrt(np.mean(audio * audio)))
    return max(SILENCE_DB, float(20.0 * np.log10(rms))) if rms > 0 else SILENCE_DB


def check_duration(duration_s: float, min_s: float, max_s: float | None = None) -> str | None:
    if duration_s < min_s:
        return "too_short"
    if max_s is not None and duration_s > max_s + 1e-6:
        return "too_long"
    return None


def check_audio(has_audio: bool, rms_db: float | None, min_rms_db: float) -> str | None:
    if not has_audio:
        return "no_audio"
    if rms_db is None or rms_db < min_rms_db:
        return "silent_audio"
    return None


def check_faces(n_faces: int, face_size: float, max_faces: int, min_face_px: float) -> str | None:
    """``n_faces``: most faces seen in one frame; ``face_size``: the tracked face's median box side."""
    if n_faces < 1:
        return "no_face"
    if n_faces > max_faces:
        return "multiple_faces"
    if face_size < min_face_px:
        return "face_too_small"
    return None
