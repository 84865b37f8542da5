"""What would be kept under other thresholds, from the scores already in the manifest.

Every candidate clip keeps the scores its stages computed, so changing a threshold needs no model
to run again. A thresholds file (YAML or JSON)::

    thresholds:                    # score name -> bounds; overrides the thresholds in force
      score_quality: {min: 3.5}    # "quality" is accepted for "score_quality"
      score_pose_range_deg: {max: 60}
      score_sync_offset: null      # null drops a threshold in force
    hard: [faces, cheap/too_short] # rejections that stay whatever the scores say (stage or stage/reason)

Each clip lands in one category:

- ``kept``: its rejection (if any) is not hard, every threshold's score is known and within
  bounds, and it has a shard sample;
- ``hard_rejection``: rejected for a stage or reason listed as hard;
- ``below_threshold``: a known score is out of bounds;
- ``not_featurised``: would pass every threshold, but has no sample because it was rejected before
  its features were computed; it is not kept, and needs a pipeline re-run ("would pass but not
  featurised");
- ``not_evaluated``: no known score fails, but a threshold's score is missing (the stage never ran
  for it), so it cannot be judged without running the pipeline again; not kept.

The thresholds in force are read from the manifest's ``thresholds`` column, where the job records
them with what each bounds and the quality metric's direction (:mod:`manifests.thresholds`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from manifests.schema import SCORE_COLUMNS
from manifests.thresholds import Bounds, RethresholdError, normalise_thresholds, parse_thresholds
from shards import storage

RETHRESHOLD_STAGE = "rethreshold"
CATEGORIES = ("kept", "hard_rejection", "below_threshold", "not_featurised", "not_evaluated")


@dataclass(frozen=True)
class Rules:
    thresholds: dict[str, Bounds | None]  # overrides; None drops a threshold in force
    hard: tuple[str, ...] = ()  # "stage" or "stage/reason"


def load_rules(path: str | Path) -> Rules:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RethresholdError(f"{path}: cannot read thresholds file ({exc})") from exc
    if not isinstance(data, dict) or set(data) - {"thresholds", "hard"}:
        raise RethresholdError(f"{path}: expected a mapping with 'thresholds' and optional 'hard'")
    hard = data.get("hard") or []
    if not isinstance(hard, list) or not all(isinstance(h, str) for h in hard):
        raise RethresholdError(f"{path}: 'hard' must be a list of stage or stage/reason names")
    return Rules(normalise_thresholds(data.get("thresholds"), allow_drop=True), tuple(hard))


def thresholds_in_force(clips: pd.DataFrame) -> list[tuple[dict[str, Bounds], int]]:
    """The distinct thresholds JSON values of the manifest, most common first, with clip counts."""
    counts = clips["thresholds"].value_counts(dropna=False)
    return [(parse_thresholds(text), int(count)) for text, count in counts.items() if count]


@dataclass
class Selection:
    """The outcome of re-thresholding, one entry per clip row."""

    kept: np.ndarray  # bool, the new selection
    category: np.ndarray  # one of CATEGORIES
    stage: np.ndarray  # object: the new rejection stage (None when kept)
    reason: np.ndarray
    thresholds: np.ndarray  # object: JSON of the thresholds applied to each row
    by_dataset: pd.DataFrame
    totals: dict[str, Any]


def rethreshold(clips: pd.DataFrame, rules: Rules) -> Selection:
    """Judge every clip against the thresholds in force updated by ``rules`` (vectorised)."""
    n = len(clips)
    was_kept = clips["kept"].fillna(False).astype(bool).to_numpy()
    has_sample = (clips["shard"].notna() & clips["key"].notna()).to_numpy()
    stage_reason = (clips["stage"].astype("string") + "/" + clips["reason"].astype("string")).fillna("")
    hard = ~was_kept & (clips["stage"].isin(rules.hard) | stage_reason.isin(rules.hard)).to_numpy()

    failing = np.zeros(n, dtype=bool)
    missing = np.zeros(n, dtype=bool)
    why_failing = np.full(n, None, dtype=object)  # the earliest failing score, as a reason
    why_missing = np.full(n, None, dtype=object)  # the earliest missing score, as a reason
    applied = np.full(n, None, dtype=object)
    scores = {c: clips[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in SCORE_COLUMNS}
    for text, rows in clips.groupby("thresholds", dropna=False, observed=True).indices.items():
        merged = {**parse_thresholds(text), **rules.thresholds}
        merged = {k: v for k, v in merged.items() if v is not None}
        applied[rows] = json.dumps(merged, sort_keys=True)
        for column in reversed(SCORE_COLUMNS):  # reversed: the earliest score's reason wins
            if column not in merged:
                continue
            values = scores[column][rows]
            low = values < merged[column].get("min", -np.inf)
            high = values > merged[column].get("max", np.inf)
            unknown = np.isnan(values)
            failing[rows] |= low | high
            missing[rows] |= unknown
            why_missing[rows[unknown]] = f"{column}_missing"
            why_failing[rows[high]] = f"{column}_above_max"
            why_failing[rows[low]] = f"{column}_below_min"

    passes = ~hard & ~failing & ~missing
    kept = passes & has_sample
    category = np.select([kept, hard, failing, passes], CATEGORIES[:4], default="not_evaluated")
    original_stage = clips["stage"].astype(object).where(clips["stage"].notna(), None).to_numpy()
    original_reason = clips["reason"].astype(object).where(clips["reason"].notna(), None).to_numpy()
    newly_rejected = was_kept & ~kept
    stage = np.where(kept, None, np.where(newly_rejected, RETHRESHOLD_STAGE, original_stage))
    why = np.where(failing, why_failing, why_missing)
    reason = np.where(kept, None, np.where(newly_rejected, why, original_reason))

    hours = ((clips["end_s"] - clips["start_s"]) / 3600).to_numpy()
    frame = pd.DataFrame({
        "dataset": clips["dataset"].astype("string").fillna("(none)").to_numpy(),
        "clips_before": was_kept, "hours_before": hours * was_kept,
        "clips_after": kept, "hours_after": hours * kept,
        "newly_dropped": newly_rejected, "newly_kept": kept & ~was_kept,
        "not_featurised": category == "not_featurised",
    })
    by_dataset = frame.groupby("dataset").sum(numeric_only=False)
    for column in ("clips_before", "clips_after", "newly_dropped", "newly_kept", "not_featurised"):
        by_dataset[column] = by_dataset[column].astype(int)
    totals = {name: int((category == name).sum()) for name in CATEGORIES}
    totals.update({
        "clips_before": int(was_kept.sum()), "clips_after": int(kept.sum()),
        "hours_before": float(hours[was_kept].sum()), "hours_after": float(hours[kept].sum()),
        "newly_dropped": int(newly_rejected.sum()), "newly_kept": int((kept & ~was_kept).sum()),
    })
    return Selection(kept, category, stage, reason, applied, by_dataset, totals)


def write_selection(clips_path: str | Path, selection: Selection, out_path: str | Path) -> None:
    """A copy of the clip manifest (same schema and metadata) with the new selection applied."""
    table = storage.read_parquet(str(clips_path))
    replacements = {"kept": pa.array(selection.kept, pa.bool_()),
                    "stage": pa.array(selection.stage, pa.string()),
                    "reason": pa.array(selection.reason, pa.string()),
                    "thresholds": pa.array(selection.thresholds, pa.string())}
    for name, column in replacements.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    if storage.has_scheme(str(out_path)):  # an object appears whole once uploaded
        fs, path = storage.filesystem_for(str(out_path))
        with fs.open_output_stream(path) as sink:
            pq.write_table(table, sink)
        return
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out_path)


def selection_as_dict(selection: Selection) -> dict[str, Any]:
    by_dataset = selection.by_dataset.reset_index().to_dict(orient="records")
    return {"totals": selection.totals, "by_dataset": by_dataset}
