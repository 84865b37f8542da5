"""What a clip row's ``thresholds`` cell says, and how re-thresholding reads it.

The job records its ``filters`` settings with two additions (:func:`record`):

* ``filters.quality.lower_better``: the quality metric's direction, as the scorer reported it;
* ``meaning``: for every threshold setting, the score column it bounds and how
  (``min``, ``max``, or ``abs`` for +-value);
* ``in_force``: the score bounds that dropped clips in this run ({score column: {min, max}}; a
  section in ``mode: score`` only recorded).

:func:`parse_thresholds` reads ``in_force`` when present. Manifests written before it existed hold
only the ``filters`` settings; their bounds are derived with :data:`FILTER_SETTINGS` and, for the
quality metric's direction, :data:`LOWER_BETTER_METRICS`. A cell may also hold score bounds alone,
as ``--write-manifest`` writes them.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from manifests.schema import SCORE_COLUMNS

Bounds = dict[str, float]  # {"min": x} and/or {"max": x}

# How each filter setting (``filters`` in configs/pipeline.yaml) bounds a score.
FILTER_SETTINGS: dict[str, dict[str, tuple[str, str]]] = {
    "duration": {"min_s": ("score_duration_s", "min"), "max_s": ("score_duration_s", "max")},
    "audio": {"min_rms_db": ("score_audio_rms_db", "min")},
    "faces": {"max_faces": ("score_face_count", "max"), "min_face_px": ("score_face_size", "min")},
    "quality": {"threshold": ("score_quality", "min")},  # "max" for a lower-is-better metric
    "sync": {"min_conf": ("score_sync_conf", "min"), "max_abs_offset": ("score_sync_offset", "abs")},
    "head_motion": {"max_pose_range_deg": ("score_pose_range_deg", "max"),
                    "max_pose_speed_deg_s": ("score_pose_speed_deg_s", "max"),
                    "max_t_range": ("score_t_range", "max"), "max_t_speed": ("score_t_speed", "max")},
}
# pyiqa's no-reference metrics that score better images lower (pyiqa 0.1.16's ``lower_better``);
# used only for manifests that did not record the direction.
LOWER_BETTER_METRICS = frozenset({"afine_nr", "brisque", "brisque_matlab", "ilniqe", "niqe", "niqe_matlab",
                                  "pi", "piqe"})
RECORD_KEYS = ("meaning", "in_force")


class RethresholdError(ValueError):
    """Thresholds that cannot be applied."""


def score_column(name: str) -> str:
    column = name if name.startswith("score_") else f"score_{name}"
    if column not in SCORE_COLUMNS:
        raise RethresholdError(f"unknown score {name!r}; known: {', '.join(SCORE_COLUMNS)}")
    return column


def normalise_thresholds(raw: Any, allow_drop: bool = False) -> dict[str, Bounds | None]:
    """Validate a {score: {min, max}} mapping and give every score its ``score_`` column name."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RethresholdError(f"thresholds must be a mapping of score names, got {type(raw).__name__}")
    out: dict[str, Bounds | None] = {}
    for name, bounds in raw.items():
        column = score_column(str(name))
        if bounds is None and allow_drop:
            out[column] = None
            continue
        if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max"}:
            raise RethresholdError(f"{name}: expected {{min: x}} and/or {{max: x}}, got {bounds!r}")
        try:
            out[column] = {side: float(value) for side, value in bounds.items()}
        except (TypeError, ValueError) as exc:
            raise RethresholdError(f"{name}: bounds must be numbers, got {bounds!r}") from exc
        if out[column].get("min", -np.inf) > out[column].get("max", np.inf):
            raise RethresholdError(f"{name}: min is above max")
    return out


def meaning(filters: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{"section.setting": {"score": column, "bound": min|max|abs}} for every threshold setting."""
    out = {}
    for section, settings in filters.items():
        if section not in FILTER_SETTINGS or not isinstance(settings, dict):
            continue
        for setting, (column, side) in FILTER_SETTINGS[section].items():
            if setting in settings:
                if section == "quality" and settings.get("lower_better"):
                    side = "max"
                out[f"{section}.{setting}"] = {"score": column, "bound": side}
    return out


def bounds_in_force(filters: dict[str, Any], meanings: dict[str, dict[str, str]]) -> dict[str, Bounds]:
    """Score bounds of the filter sections that drop clips (``mode: score`` only records)."""
    bounds: dict[str, Bounds] = {}
    for name, rule in meanings.items():
        section, setting = name.split(".", 1)
        settings = filters.get(section)
        if not isinstance(settings, dict) or settings.get("mode", "drop") != "drop":
            continue
        value = settings.get(setting)
        if value is None:
            continue
        entry = bounds.setdefault(rule["score"], {})
        if rule["bound"] == "abs":
            entry.update(min=-float(value), max=float(value))
        else:
            entry[rule["bound"]] = float(value)
    return bounds


def record(filters: dict[str, Any], quality_lower_better: bool | None) -> dict[str, Any]:
    """The ``thresholds`` cell the job writes: its filter settings, the quality metric's direction,
    what each threshold bounds and the bounds in force."""
    filters = {k: (dict(v) if isinstance(v, dict) else v) for k, v in filters.items()}
    if quality_lower_better is not None and isinstance(filters.get("quality"), dict):
        filters["quality"]["lower_better"] = bool(quality_lower_better)
    meanings = meaning(filters)
    return {**filters, "meaning": meanings, "in_force": bounds_in_force(filters, meanings)}


def _legacy_bounds(sections: dict[str, Any]) -> dict[str, Bounds]:
    """Bounds of a cell that holds only the ``filters`` settings (manifests from before ``in_force``)."""
    quality = sections.get("quality")
    if isinstance(quality, dict) and "lower_better" not in quality:
        quality = {**quality, "lower_better": str(quality.get("metric")) in LOWER_BETTER_METRICS}
        sections = {**sections, "quality": quality}
    return bounds_in_force(sections, meaning(sections))


def _is_filter_section(name: str, value: Any) -> bool:
    return name in FILTER_SETTINGS and isinstance(value, dict) and not set(value) <= {"min", "max"}


def parse_thresholds(text: Any) -> dict[str, Bounds]:
    """One ``thresholds`` JSON cell -> the score bounds in force. Unreadable or null cells mean none."""
    try:
        parsed = json.loads(text) if isinstance(text, str) else {}
        if isinstance(parsed, dict) and isinstance(parsed.get("filters"), dict):
            parsed = parsed["filters"]
        if not isinstance(parsed, dict):
            return {}
        if isinstance(parsed.get("in_force"), dict):
            return {k: v for k, v in normalise_thresholds(parsed["in_force"]).items() if v is not None}
        sections = {k: v for k, v in parsed.items() if _is_filter_section(k, v)}
        direct = {k: v for k, v in parsed.items() if k not in sections and k not in RECORD_KEYS}
        bounds = _legacy_bounds(sections)
        bounds.update({k: v for k, v in normalise_thresholds(direct).items() if v is not None})
        return bounds
    except (ValueError, RethresholdError):
        return {}
