"""What the dataset holds and what was dropped: counts, hours, rejections and score distributions.

``summarise`` turns the manifests into plain JSON-ready data (vectorised over the tables);
``format_summary`` prints it as readable tables. Both the CLI and the HTML report use it.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from manifests.checks import PipelineOutput, split_groups
from shards import storage
from manifests.rethreshold import Bounds, thresholds_in_force
from manifests.schema import SCORE_COLUMNS
from shards.split import size_buckets

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def clip_hours(clips: pd.DataFrame) -> pd.Series:
    return (clips["end_s"] - clips["start_s"]) / 3600.0


def kept_mask(clips: pd.DataFrame) -> pd.Series:
    return clips["kept"].fillna(False).astype(bool)


def stage_order(clips: pd.DataFrame) -> list[str]:
    """Rejecting stages in pipeline order, inferred from the data rather than from their names:
    a later stage's rejects carry more scores (every earlier stage ran on them)."""
    rejected = (~kept_mask(clips) & clips["stage"].notna()).to_numpy()
    if not rejected.any():
        return []
    n_scores = clips[list(SCORE_COLUMNS)].notna().sum(axis=1).to_numpy()[rejected]
    stages = clips["stage"].astype("string").to_numpy()[rejected]
    depth = pd.Series(n_scores).groupby(stages).mean()
    return sorted(depth.index, key=lambda stage: (depth[stage], stage))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _floats(values: pd.Series | np.ndarray) -> np.ndarray:
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(values, dtype=np.float64)


def _quantiles(values: pd.Series | np.ndarray) -> dict[str, float] | None:
    values = _floats(values)
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    return {f"q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))}


def _outside(values: np.ndarray, bounds: Bounds) -> np.ndarray:
    return (values < bounds.get("min", -np.inf)) | (values > bounds.get("max", np.inf))


def _labels(clips: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns as plain strings, nulls shown as "(none)", for grouping."""
    return pd.DataFrame({c: clips[c].astype("string").fillna("(none)") for c in columns})


def retryable(output: PipelineOutput) -> dict[str, Any]:
    """Items that failed for infrastructure reasons and wait for a rerun (``OUT/incomplete/``,
    written by the job), apart from the rejections: they are not in the manifests at all."""
    folder = storage.join(str(output.root), "incomplete")
    items = []
    for name in storage.list_names(folder, ".json") if storage.is_dir(folder) else []:
        record = json.loads(storage.read_bytes(storage.join(folder, name)))
        items += [{"chunk": record["chunk"], **item} for item in record["items"]]
    kinds = pd.Series([i["kind"] for i in items], dtype="string").value_counts()
    return {"items": items, "chunks": sorted({i["chunk"] for i in items}),
            "kinds": {str(k): int(v) for k, v in kinds.items()},
            "chunks_not_done": list((output.run or {}).get("incomplete", {}).get("chunks", []))}


def group_distribution(clips: pd.DataFrame, top: int = 5) -> dict[str, Any]:
    """Videos per split group (speaker, face identity or video): how many groups, the largest
    ones with their share of the videos and their split, and sizes bucketed by powers of two."""
    if clips.empty:
        return {"videos": 0, "groups": 0, "largest_group_share": 0.0, "sizes": {}, "largest": []}
    frame = pd.DataFrame({"video": clips["video_id"].astype(str), "group": split_groups(clips),
                          "split": clips["split"].astype("string").fillna("(none)")})
    per_video = frame.drop_duplicates("video")
    sizes = per_video.groupby("group").size().sort_values(ascending=False, kind="stable")
    split_of = per_video.groupby("group")["split"].first()
    videos = len(per_video)
    return {
        "videos": videos, "groups": len(sizes), "largest_group_share": float(sizes.iloc[0] / videos),
        "sizes": size_buckets(sizes.to_numpy()),
        "largest": [{"group": group, "videos": int(n), "share": float(n / videos), "split": split_of[group]}
                    for group, n in sizes.head(top).items()],
    }


def summarise(output: PipelineOutput) -> dict[str, Any]:
    clips, videos = output.clips, output.videos
    kept = kept_mask(clips).to_numpy()
    hours = clip_hours(clips).to_numpy(dtype=np.float64, na_value=np.nan)

    def by(columns: list[str], mask: np.ndarray) -> pd.DataFrame:
        frame = _labels(clips, columns)[mask].assign(hours=hours[mask])
        return frame.groupby(columns)["hours"].agg(clips="size", hours="sum").reset_index()

    def kept_by(columns: list[str]) -> list[dict[str, Any]]:
        return _records(by(columns, kept))

    order = stage_order(clips)
    rejections = by(["stage", "reason"], ~kept)
    rank = {stage: i for i, stage in enumerate(order)}
    rejections["rank"] = rejections["stage"].map(rank).fillna(len(rank))
    rejections = rejections.sort_values(["rank", "clips"], ascending=[True, False]).drop(columns="rank")
    funnel, remaining = [{"stage": "candidates", "rejected": 0, "remaining": len(clips)}], len(clips)
    for stage, count in rejections.groupby("stage", sort=False)["clips"].sum().items():
        remaining -= int(count)
        funnel.append({"stage": stage, "rejected": int(count), "remaining": remaining})

    in_force = thresholds_in_force(clips)
    main_thresholds = in_force[0][0] if in_force else {}
    scores = {}
    for column in SCORE_COLUMNS:
        values = _floats(clips[column])
        scored = ~np.isnan(values)
        if not scored.any():
            continue
        bounds = main_thresholds.get(column)
        scores[column] = {
            "n_scored": int(scored.sum()), "n_kept": int((scored & kept).sum()),
            "threshold": bounds,
            "outside_threshold": int(_outside(values, bounds).sum()) if bounds else None,
            "scored": _quantiles(values), "kept": _quantiles(values[kept]),
        }

    failed = (videos["status"] != "ok").to_numpy()
    failed_by = _labels(videos, ["stage", "error"])[failed]
    random_rows = int(clips["random_weights"].fillna(False).astype(bool).sum())
    return {
        "root": str(output.root),
        "totals": {
            "videos": len(videos), "videos_failed": int(failed.sum()),
            "clips": len(clips), "clips_kept": int(kept.sum()), "clips_rejected": int((~kept).sum()),
            "hours_candidates": float(np.nansum(hours)), "hours_kept": float(np.nansum(hours[kept])),
            "clips_with_random_weights": random_rows,
        },
        "kept_by_dataset": kept_by(["dataset"]),
        "kept_by_language": kept_by(["language"]),
        "kept_by_split": kept_by(["split"]),
        "kept_by_dataset_split": kept_by(["dataset", "split"]),
        "split_groups": group_distribution(clips),
        "rejections": _records(rejections),
        "funnel": funnel,
        "failed_videos": _records(failed_by.groupby(["stage", "error"]).size().rename("videos").reset_index()),
        "thresholds_in_force": [{"thresholds": t, "clips": n} for t, n in in_force],
        "scores": scores,
        "duration_s": {"kept": _quantiles(hours[kept] * 3600), "candidates": _quantiles(hours * 3600)},
        "pose_range_deg": {"kept": _quantiles(_floats(clips["score_pose_range_deg"])[kept])},
        "retryable": retryable(output),
    }


def _table(rows: list[dict[str, Any]], floats: str = "{:.3f}") -> str:
    if not rows:
        return "  (none)"
    frame = pd.DataFrame(rows)
    text = frame.to_string(index=False, float_format=lambda v: floats.format(v))
    return "\n".join("  " + line for line in text.splitlines())


def format_summary(summary: dict[str, Any]) -> str:
    t = summary["totals"]
    lines = [
        f"Output: {summary['root']}",
        (f"Videos: {t['videos']} ({t['videos_failed']} failed)   "
         f"Clips: {t['clips']} candidates, {t['clips_kept']} kept, {t['clips_rejected']} rejected"),
        f"Hours: {t['hours_candidates']:.3f} candidates, {t['hours_kept']:.3f} kept",
    ]
    if t["clips_with_random_weights"]:
        lines.append(f"WARNING: {t['clips_with_random_weights']} clips were scored with RANDOM "
                     "model weights; their scores and features mean nothing")
    for title, key in (("Kept by dataset", "kept_by_dataset"), ("Kept by language", "kept_by_language"),
                       ("Kept by split", "kept_by_split"), ("Rejections by stage and reason", "rejections"),
                       ("Failed videos", "failed_videos")):
        lines += ["", f"{title}:", _table(summary[key])]
    lines += ["", "Funnel:", _table(summary["funnel"])]
    groups = summary["split_groups"]
    lines += ["", (f"Split groups: {groups['videos']} videos in {groups['groups']} groups, the largest holding "
                   f"{100 * groups['largest_group_share']:.1f}%; videos per group: "
                   + (", ".join(f"{k}: {v}" for k, v in groups["sizes"].items()) or "-")),
              _table(groups["largest"])]
    waiting = summary.get("retryable") or {}
    if waiting.get("items") or waiting.get("chunks_not_done"):
        kinds = ", ".join(f"{k} {v}" for k, v in waiting["kinds"].items()) or "none recorded"
        lines += ["", (f"Retryable, not rejected (infrastructure failures; rerun the job): {len(waiting['items'])} "
                       f"items in chunks {waiting['chunks']} ({kinds}); chunks not done: {waiting['chunks_not_done']}"),
                  _table([{k: i[k] for k in ("chunk", "step", "source", "start_s", "kind", "attempts")}
                          for i in waiting["items"][:20]])]
    score_rows = []
    for name, info in summary["scores"].items():
        q = info["scored"]
        bounds = info["threshold"] or {}
        score_rows.append({"score": name, "scored": info["n_scored"], "min": q["q00"], "p05": q["q05"],
                           "median": q["q50"], "p95": q["q95"], "max": q["q100"],
                           "threshold": " ".join(f"{k}={v:g}" for k, v in bounds.items()) or "-",
                           "outside": "-" if info["outside_threshold"] is None else info["outside_threshold"]})
    lines += ["", "Scores (all scored clips) against the thresholds in force:", _table(score_rows)]
    if len(summary["thresholds_in_force"]) > 1:
        lines.append(f"  note: {len(summary['thresholds_in_force'])} different threshold sets in the "
                     "manifest; the table uses the most common")
    for title, key in (("Clip duration (s), kept", "duration_s"), ("Head-pose range (deg), kept", "pose_range_deg")):
        q = summary[key]["kept"]
        lines += ["", f"{title}: " + ("-" if q is None else
                                      "  ".join(f"{k}={v:.2f}" for k, v in q.items()))]
    return "\n".join(lines)
