"""A self-contained HTML report for people: one file, no network, opens anywhere.

Plots are matplotlib figures embedded as base64 PNG; the style sheet is inline; there is no script
and no external reference. It shows the audit result, the kept-data tables, a rejection funnel,
per-dataset balance, every score's histogram with its thresholds, and a contact sheet: one frame
from the middle of a few example clips for each rejection reason (and for kept clips), decoded
from the source video with PyAV when the source is a reachable local file. Unreachable sources are
skipped and listed.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from manifests.checks import AuditResult, PipelineOutput
from manifests.summary import kept_mask

EXAMPLES_PER_REASON = 4
MAX_TRIES_PER_REASON = 12  # unreachable sources are skipped, up to this many clips per reason
THUMB_SIDE = 160
HIST_BINS = 40
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; }
.ok { color: #070; } .bad { color: #b00; } .warn { background: #fee; padding: 0.5em; }
.sheet { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 1em; }
figure { margin: 0; font-size: 11px; width: 170px; }
.plots img { max-width: 48%; }
"""


def figure_to_img(fig: plt.Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)


def funnel_plot(summary: dict[str, Any]) -> str:
    funnel = summary["funnel"]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(funnel) + 1))
    labels = [step["stage"] for step in funnel]
    remaining = [step["remaining"] for step in funnel]
    ax.barh(labels, remaining, color="#4a7")
    ax.barh(labels, [step["rejected"] for step in funnel], left=remaining, color="#d55")
    ax.invert_yaxis()
    ax.set_xlabel("clips (green: remaining after the stage, red: rejected by it)")
    ax.set_title("Rejection funnel")
    return figure_to_img(fig, "rejection funnel")


def balance_plot(summary: dict[str, Any]) -> str:
    rows = pd.DataFrame(summary["kept_by_dataset_split"])
    fig, ax = plt.subplots(figsize=(6, 3))
    if not rows.empty:
        table = rows.pivot_table(index=rows.columns[0], columns=rows.columns[1], values="hours",
                                 aggfunc="sum", fill_value=0)
        table.plot.bar(stacked=True, ax=ax, rot=0)
    ax.set_ylabel("hours kept")
    ax.set_title("Per-dataset balance (stacked by split)")
    return figure_to_img(fig, "per-dataset balance")


def score_histogram(clips: pd.DataFrame, column: str, info: dict[str, Any]) -> str:
    values = clips[column].to_numpy(dtype=np.float64, na_value=np.nan)
    kept = kept_mask(clips).to_numpy()
    scored = np.isfinite(values)
    fig, ax = plt.subplots(figsize=(5, 2.6))
    bins = np.histogram_bin_edges(values[scored], bins=HIST_BINS)
    ax.hist([values[scored & kept], values[scored & ~kept]], bins=bins, stacked=True,
            color=["#4a7", "#d55"], label=["kept", "rejected"])
    for side, bound in (info["threshold"] or {}).items():
        ax.axvline(bound, color="k", linestyle="--")
        ax.annotate(f"{side} {bound:g}", (bound, ax.get_ylim()[1] * 0.9), fontsize=8,
                    ha="left" if side == "min" else "right")
    ax.set_title(f"{column} ({info['n_scored']} scored)")
    ax.legend(fontsize=7)
    return figure_to_img(fig, f"histogram of {column}")


def duration_histogram(clips: pd.DataFrame) -> str:
    duration = (clips["end_s"] - clips["start_s"]).to_numpy(dtype=np.float64, na_value=np.nan)
    kept = kept_mask(clips).to_numpy() & np.isfinite(duration)
    fig, ax = plt.subplots(figsize=(5, 2.6))
    rejected = ~kept_mask(clips).to_numpy() & np.isfinite(duration)
    ax.hist([duration[kept], duration[rejected]], bins=HIST_BINS, stacked=True,
            color=["#4a7", "#d55"], label=["kept", "rejected"])
    ax.set_title("clip duration (s)")
    ax.legend(fontsize=7)
    return figure_to_img(fig, "histogram of clip durations")


@dataclass
class Thumbnail:
    clip_id: str
    caption: str
    image: str | None  # <img> tag, or None when the frame could not be taken
    problem: str | None


def midpoint_frame(source: str, seconds: float) -> np.ndarray:
    """Decode the frame shown at ``seconds`` (RGB), seeking to the keyframe before it."""
    with av.open(source) as container:
        stream = container.streams.video[0]
        container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
        frame = None
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds - 0.02:
                break
        if frame is None:
            raise ValueError("no frame decoded")
        return frame.to_ndarray(format="rgb24")


def local_source(source: str) -> Path | None:
    """The source as a local file path, or None for a remote URI (never fetched by the report)."""
    if source.startswith("file://"):
        source = source[len("file://"):]
    elif "://" in source:
        return None
    return Path(source)


def thumbnail(row: pd.Series, caption: str) -> Thumbnail:
    source = str(row["source"])
    path = local_source(source)
    if path is None:
        return Thumbnail(row["clip_id"], caption, None, f"remote source not fetched: {source}")
    if not path.is_file():
        return Thumbnail(row["clip_id"], caption, None, f"source unreachable: {source}")
    try:
        pixels = midpoint_frame(str(path), (row["start_s"] + row["end_s"]) / 2)
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        return Thumbnail(row["clip_id"], caption, None, f"cannot decode {source}: {exc}")
    image = Image.fromarray(pixels)
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    data = base64.b64encode(buffer.getvalue()).decode()
    tag = f'<img alt="clip {html.escape(row["clip_id"])}" src="data:image/jpeg;base64,{data}">'
    return Thumbnail(row["clip_id"], caption, tag, None)


def contact_sheet(clips: pd.DataFrame) -> str:
    """A row of example frames per rejection reason, and one for kept clips."""
    labels = (clips["stage"].astype("string") + "/" + clips["reason"].astype("string")).fillna("kept")
    labels = labels.where(~kept_mask(clips), "kept")
    parts, skipped = [], []
    for label in sorted(labels.unique(), key=lambda s: (s != "kept", s)):
        candidates = clips[labels == label].sort_values("clip_id").head(MAX_TRIES_PER_REASON)
        figures = []
        for _, row in candidates.iterrows():
            if len(figures) == EXAMPLES_PER_REASON:
                break
            caption = (f"{row['dataset']} · {row['start_s']:.1f}-{row['end_s']:.1f} s · "
                       f"{str(row['clip_id'])[:8]}")
            thumb = thumbnail(row, caption)
            if thumb.image is None:
                skipped.append(f"{label} {str(row['clip_id'])[:8]}: {thumb.problem}")
                continue
            figures.append(f"<figure>{thumb.image}<figcaption>{html.escape(caption)}</figcaption></figure>")
        count = int((labels == label).sum())
        body = "".join(figures) or "<p>no frame available</p>"
        parts.append(f"<h3>{html.escape(label)} ({count} clips)</h3><div class='sheet'>{body}</div>")
    if skipped:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in skipped)
        parts.append(f"<p>Skipped {len(skipped)} examples whose source could not be read:</p><ul>{items}</ul>")
    return "".join(parts)


def audit_section(result: AuditResult | None) -> str:
    if result is None:
        return ""
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    mode = "deep" if result.deep else "metadata and shard listing"
    if result.ok:
        return f"<h2>Audit</h2><p class='ok'>OK ({mode}; {html.escape(counts)})</p>"
    return (f"<h2>Audit</h2><p class='bad'>{len(result.problems)} problems ({mode}; "
            f"{html.escape(counts)})</p>" + table_html([p.as_dict() for p in result.problems[:500]]))


def groups_section(groups: dict[str, Any]) -> str:
    """The split groups: how many videos each holds, and the largest ones."""
    sizes = [{"videos per group": k, "groups": v} for k, v in groups["sizes"].items()]
    return (f"<h3>Split groups</h3><p>{groups['videos']} videos in {groups['groups']} groups; the largest "
            f"holds {100 * groups['largest_group_share']:.1f}% of the videos.</p>"
            + table_html(sizes) + table_html(groups["largest"]))


def render_report(output: PipelineOutput, summary: dict[str, Any], result: AuditResult | None = None) -> str:
    t = summary["totals"]
    clips = output.clips
    warning = ""
    if t["clips_with_random_weights"]:
        warning = (f"<p class='warn'>{t['clips_with_random_weights']} clips were scored with RANDOM "
                   "model weights: their scores and features mean nothing.</p>")
    histograms = [score_histogram(clips, name, info) for name, info in summary["scores"].items()]
    histograms.append(duration_histogram(clips))
    body = [
        f"<h1>Dataset report: {html.escape(summary['root'])}</h1>", warning,
        (f"<p>{t['videos']} videos ({t['videos_failed']} failed); {t['clips']} candidate clips, "
         f"{t['clips_kept']} kept ({t['hours_kept']:.2f} of {t['hours_candidates']:.2f} hours).</p>"),
        audit_section(result),
        "<h2>Kept data</h2>", "<h3>By dataset</h3>", table_html(summary["kept_by_dataset"]),
        "<h3>By language</h3>", table_html(summary["kept_by_language"]),
        "<h3>By split</h3>", table_html(summary["kept_by_split"]),
        groups_section(summary["split_groups"]),
        "<div class='plots'>", balance_plot(summary), funnel_plot(summary), "</div>",
        "<h2>Rejections</h2>", table_html(summary["rejections"]),
        "<h3>Failed videos</h3>", table_html(summary["failed_videos"]),
        "<h2>Scores against the thresholds in force</h2><div class='plots'>", *histograms, "</div>",
        "<h2>Contact sheet: a frame from the middle of example clips</h2>", contact_sheet(clips),
    ]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Dataset report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def write_report(path: str | Path, output: PipelineOutput, summary: dict[str, Any],
                 result: AuditResult | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(output, summary, result), encoding="utf-8")
    return path
