"""Score a checkpoint the way the JoyVASA paper does (Tables 1 and 2): ``python -m training.benchmark``.

::

    python -m training.benchmark --checkpoint runs/x/checkpoint.pt --test-set testset/test_set.csv --out bench_x \\
        [--iqa-metric qalign|piqe|...] [--max-items N] [--max-frames F] [--min-track 100] [--random-weights]

Every item of the test set (``training.test_set``) is rendered with ``training.animate`` (portrait +
speech -> talking video) into ``OUT/videos/ID.mp4``, then scored, per item and in aggregate:

- Sync-C / Sync-D: SyncNet on syncnet_python-style face tracks and crops (``training.metrics.sync``),
  on the generated video and on the ground truth (the ceiling);
- IQA / VQA: Q-Align through pyiqa (paper scale 0..100) on the generated frames, VQA as the mean of
  the 1 fps frames' scores (``training.metrics.qalign`` says why); ``--iqa-metric piqe`` (and random
  mode) is a labelled stand-in on its own scale;
- Smooth: VBench's motion_smoothness with AMT-S (x100 in the table, as the paper prints it);
- FVD-25 (StyleGAN-V's I3D, non-overlapping 25-frame clips) of generated against ground-truth
  videos, over the whole set (frame FID: a column, not computed yet);
- the generated motion's dynamics (``training.motion_metrics``, as ``training.evaluate`` reports them).

Writes ``results.json``, ``results.md`` (the paper's columns, its published rows beside ours) and
``index.html`` (each item's ground truth and generated video side by side). Every metric network
comes from the weights registry; all missing files are named in one error before anything renders.
``--random-weights`` runs everything with random networks and stand-ins, marked in every output.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from models.weights import RANDOM, MissingWeightsError, require, warn_random
from shards.format import FPS
from training.metrics.qalign import QALIGN_METRICS, describe, quality_scores
from training.metrics.video_io import read_frames, read_speech_span
from training import sampling
from training.sample import EXIT_BAD_INPUT, BadInputError
from training.template import atomic_output
from training.test_set import TestItem, TestSetError, read_test_set, reference_portrait

log = logging.getLogger(__name__)

# The paper's published rows (REFERENCE §13): CelebV-HQ test (Table 1) and its open set (Table 2).
PAPER_ROWS = {
    "JoyVASA paper, Table 1 (CelebV-HQ test)": {"iqa": 68.97, "vqa": 72.42, "sync_c": 4.85, "sync_d": 13.53,
                                                 "fvd": 459.04, "smooth": 99.60},
    "JoyVASA paper, Table 2 (open set)": {"iqa": 71.45, "vqa": 77.78, "sync_c": 5.72, "sync_d": 14.01,
                                           "fvd": None, "smooth": 99.48},
}
COLUMNS = (("iqa", "IQA"), ("vqa", "VQA"), ("sync_c", "Sync-C"), ("sync_d", "Sync-D"), ("fvd", "FVD-25"),
           ("smooth", "Smooth"))
METRIC_WEIGHTS = ("syncnet_v2", "i3d_torchscript", "amt_s", "inception_fid")
RANDOM_BANNER = ("RANDOM WEIGHTS: every network (renderer, SyncNet, I3D, AMT-S, Inception) ran with random weights, and "
                 "IQA/VQA with stand-ins. These numbers are meaningless; they only show "
                 "the command works.")


# ----------------------------------------------------------------------------- metric models

class MetricModels:
    """The metric networks, loaded once: from the registry's files, or random (``random_weights``)."""

    def __init__(self, args: argparse.Namespace):
        from models.face_detectors import make_detector
        from models.i3d import load_i3d
        from models.syncnet import load_syncnet

        self.random = bool(args.random_weights)
        self.device = args.device
        paths: dict[str, Any] = {n: RANDOM for n in METRIC_WEIGHTS}
        if not self.random:
            paths.update({k: str(v) for k, v in require(METRIC_WEIGHTS, args.weights_dir).items()})
        self.syncnet = load_syncnet(paths["syncnet_v2"], device=self.device)
        self.detector = make_detector(args.face_backend, weights_dir=args.weights_dir)
        self.i3d = load_i3d(paths["i3d_torchscript"], device=self.device)
        self.interpolate, self.smooth_variant = load_interpolator(paths["amt_s"], self.device)
        from models.inception_fid import load_fid_model

        self.fid = load_fid_model(paths["inception_fid"], device=self.device)
        from models.quality import IqaModel

        self.quality = IqaModel(args.iqa_metric, device=self.device)
        self.quality_variant = describe(args.iqa_metric, self.quality.lower_better)
        self.weight_ids = {"syncnet_v2": str(self.syncnet.weight_id), "i3d": self.i3d.weight_id,
                           "quality": self.quality.weight_id, "amt_s": self.smooth_variant,
                           "inception_fid": self.fid.weight_id}


def load_interpolator(weights: str, device: str):
    """AMT-S's middle-frame predictor (VBench's call: t = 1/2, full scale) and what it is; random mode
    is AMT-S with random weights, labelled so."""
    from models.amt import load_amt_s

    model = load_amt_s(weights, device=device)
    embt = torch.full((1, 1, 1, 1), 0.5, device=device)

    def interpolate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(a, b, embt, scale_factor=1.0, eval=True)["imgt_pred"]

    variant = "VBench motion_smoothness with AMT-S" + (" (RANDOM weights)" if weights == RANDOM else
                                                       f" ({model.weight_id[:12]})")
    return interpolate, variant


def required_weights(args: argparse.Namespace) -> list[str]:
    """Every registry entry this run needs, renderer included (checked in one go)."""
    from training.animate import ANIMAL, HUMAN

    names = list(METRIC_WEIGHTS) + list((ANIMAL if args.animal else HUMAN).values())
    if args.iqa_metric in QALIGN_METRICS:
        names.append("qalign_one_align")
    return names


# ----------------------------------------------------------------------------- one item

def render(item: TestItem, args: argparse.Namespace, out_dir: Path,
           renderers: dict[str, Any]) -> tuple[Path, np.ndarray]:
    """The generated video of one item and the motion it shows, through training.animate (a video
    reference's first frame is the portrait); ``renderers`` caches the loaded networks."""
    from training import animate

    image = item.reference
    if item.reference_is_video:
        image = out_dir / "portraits" / f"{item.id}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), cv2.cvtColor(reference_portrait(item), cv2.COLOR_RGB2BGR))
    video = out_dir / "videos" / f"{item.id}.mp4"
    argv = ["--checkpoint", str(args.checkpoint), "--image", str(image), "--audio", str(item.audio),
            "--out", str(video), "--no-progress", "--face-backend", args.face_backend,
            *sampling.to_argv(sampling.from_args(args))]
    for flag, value in (("--max-frames", args.max_frames), ("--weights-dir", args.weights_dir)):
        if value is not None:
            argv += [flag, str(value)]
    if args.random_weights:
        argv.append("--random-weights")
    if args.animal:
        argv.append("--animal")
    render_args = animate.build_parser().parse_args(argv)
    render_args.batch_size = 16 if args.device.startswith("cuda") else 1
    if renderers.get("net") is None:  # the five networks load once for the whole test set,
        renderers["net"] = animate.load_renderer(render_args.animal, render_args.random_weights,
                                                 render_args.weights_dir, render_args.device,
                                                 render_args.precision, eager=render_args.eager)
        renderers["speech"] = animate.load_speech_models(render_args)  # and the checkpoint and encoder
    result = animate.animate(render_args, renderer=renderers["net"], speech_models=renderers["speech"])
    return video, result["vector"]


def dynamics_of(vector: np.ndarray) -> dict[str, Any]:
    """training.evaluate's dynamics of a (T, 70) motion (the one the video was rendered from)."""
    from training.motion_metrics import dynamics

    return {group: {k: float(v) for k, v in stats.items()} for group, stats in dynamics(vector).items()}


def score_video(models: MetricModels, frames: np.ndarray, audio: np.ndarray,
                args: argparse.Namespace) -> dict[str, Any]:
    """Sync, quality and smoothness of one video's 25 fps frames and 16 kHz audio."""
    from training.metrics.smoothness import motion_smoothness
    from training.metrics.sync import sync_metric

    scores: dict[str, Any] = {"n_frames": len(frames)}
    sync = sync_metric(models.syncnet, models.detector, frames, audio, args.min_track, args.min_face_size)
    scores.update(sync_c=sync.pop("sync_c"), sync_d=sync.pop("sync_d"), sync=sync)
    scores.update(quality_scores(models.quality, frames, args.iqa_stride))
    scores["smooth"] = 100.0 * motion_smoothness(frames, models.interpolate, models.device) \
        if len(frames) >= 3 else None
    return scores


def score_item(models: MetricModels, item: TestItem, video: Path, vector: np.ndarray, args: argparse.Namespace
               ) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    generated = read_frames(video)
    result: dict[str, Any] = {"id": item.id, "speaker": item.speaker, "video": str(video),
                              "ground_truth": None if item.ground_truth is None else str(item.ground_truth)}
    result["generated"] = score_video(models, generated, read_speech_span(video), args)
    truth = None
    if item.ground_truth is not None:
        # The same span as the generated video: the first len(generated) frames and their audio.
        truth = read_frames(item.ground_truth, max_frames=len(generated))
        audio = read_speech_span(item.ground_truth, 0.0, len(truth) / FPS)
        result["ground_truth_scores"] = score_video(models, truth, audio, args)
    result["motion_dynamics"] = dynamics_of(vector)
    if item.motion is not None:
        result["motion_vs_truth"] = motion_against_truth(vector, np.load(item.motion))
    return result, generated, truth


def motion_against_truth(generated: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """training.evaluate's comparison of the rendered motion with the ground truth's, over the
    frames both have: per-group L2 and both sides' dynamics."""
    from training.motion_metrics import group_l2

    if truth.ndim != 2 or truth.shape[1] != generated.shape[1]:
        return {"reason": f"true motion {truth.shape} does not match the generated {generated.shape}"}
    n = min(len(generated), len(truth))
    if n < 4:  # jerk, the third difference, needs four frames
        return {"reason": f"only {n} frames of motion on both sides; the dynamics need 4"}
    return {"n_frames": n, "l2": {k: float(v) for k, v in group_l2(generated[:n], truth[:n]).items()},
            "generated": dynamics_of(generated[:n]), "real": dynamics_of(truth[:n])}


# ----------------------------------------------------------------------------- the whole set

def motion_l2_means(items: list[dict[str, Any]]) -> dict[str, float] | None:
    """Frame-weighted mean per-group L2 of the rendered motion against the truth, over the items that have it."""
    scored = [i["motion_vs_truth"] for i in items if "l2" in i.get("motion_vs_truth", {})]
    if not scored:
        return None
    weights = [s["n_frames"] for s in scored]
    return {g: float(np.average([s["l2"][g] for s in scored], weights=weights)) for g in scored[0]["l2"]}


def mean_of(items: list[dict[str, Any]], side: str, key: str) -> float | None:
    values = [i[side][key] for i in items if side in i and i[side].get(key) is not None]
    return float(np.mean(values)) if values else None


def set_metrics(models: MetricModels, generated: list[np.ndarray], truths: list[np.ndarray],
                clip_len: int, fid_every: int) -> dict[str, Any]:
    """FVD and frame FID of the generated videos against the ground truths."""
    from training.metrics.fid import frame_fid
    from training.metrics.fvd import fvd

    if not truths:
        return {"fvd": {"value": None, "reason": "no item has a ground truth"},
                "fid": {"value": None, "reason": "no item has a ground truth"}}
    return {"fvd": {**fvd(models.i3d, generated, truths, clip_len, models.device),
                    "network": models.i3d.variant},
            "fid": frame_fid(models.fid, generated, truths, fid_every, models.device)}


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """Table 1's columns: the paper's rows, then ours (generated) and the ground truth's."""
    agg = report["aggregate"]
    fvd_name = agg["set"]["fvd"].get("variant") or "FVD-25"
    head = [name if key != "fvd" else f"FVD-25 (ours: {fvd_name})" for key, name in COLUMNS]
    lines = []
    if report["random_weights"]:
        lines += [f"> **{RANDOM_BANNER}**", ""]
    limit = report["settings"]["max_frames"]
    per_item = "" if limit is None else f" (at most {limit} per item)"
    lines += [f"# Benchmark of {report['checkpoint']}", "",
              f"{report['n_items']} items of {report['test_set']}, {report['n_frames']} generated frames{per_item}.",
              "", "| row | " + " | ".join(head) + " | FID |", "|" + " --- |" * (len(COLUMNS) + 2)]
    for name, row in PAPER_ROWS.items():
        lines.append(f"| {name} | " + " | ".join(fmt(row[k]) for k, _ in COLUMNS) + " | — |")
    for label, side in (("ours: generated", "generated"), ("ours: ground truth (ceiling)", "ground_truth")):
        row = agg[side]
        cells = [fmt(row.get(k)) for k, _ in COLUMNS if k != "fvd"]
        fvd = fmt(agg["set"]["fvd"].get("value")) if side == "generated" else "0 (reference)"
        fid = fmt(agg["set"]["fid"].get("value")) if side == "generated" else "0 (reference)"
        cells.insert(4, fvd)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fid} |")
    v = report["variants"]
    lines += ["", "How each column was made:", "",
              f"- IQA, VQA: {v['quality']}",
              f"- Sync-C, Sync-D: {v['sync']}",
              f"- FVD: {v['fvd']}",
              f"- Smooth: {v['smooth']} (x100)",
              f"- FID: {v['fid']}", ""]
    if agg.get("motion_l2"):
        scored = sum("l2" in i.get("motion_vs_truth", {}) for i in report["items"])
        lines += [f"Rendered motion against the ground truth's (training.evaluate's L2 per group, {scored} items "
                  "with a true motion): " + ", ".join(f"{g} {fmt(x, 3)}" for g, x in agg["motion_l2"].items()), ""]
    lines += ["| item | Sync-C gen / GT | Sync-D gen / GT | offset gen / GT | IQA | VQA | Smooth | note |",
              "|" + " --- |" * 8]
    for item in report["items"]:
        g, t = item["generated"], item.get("ground_truth_scores", {})
        notes = "; ".join(s["sync"]["reason"] for s in (g, t) if s and s["sync"].get("reason"))
        lines.append(f"| {item['id']} | {fmt(g['sync_c'])} / {fmt(t.get('sync_c'))} | {fmt(g['sync_d'])} / "
                     f"{fmt(t.get('sync_d'))} | {g['sync']['offset']} / {t.get('sync', {}).get('offset')} | "
                     f"{fmt(g['iqa'])} | {fmt(g['vqa'])} | {fmt(g['smooth'])} | {notes} |")
    return "\n".join(lines) + "\n"


def html_page(report: dict[str, Any], out_dir: Path) -> str:
    """One playable video pair per item: ground truth left, generated right."""
    rows = []
    for item in report["items"]:
        def video(path: str | None) -> str:
            if path is None:
                return "<p>(no ground truth)</p>"
            src = html.escape(os.path.relpath(path, out_dir))
            return f'<video controls preload="metadata" width="360" src="{src}"></video>'

        g = item["generated"]
        rows.append(f"<tr><td>{html.escape(item['id'])}</td><td>{video(item['ground_truth'])}</td>"
                    f"<td>{video(item['video'])}</td><td>Sync-C {fmt(g['sync_c'])}, Sync-D {fmt(g['sync_d'])}, "
                    f"IQA {fmt(g['iqa'])}, VQA {fmt(g['vqa'])}, Smooth {fmt(g['smooth'])}</td></tr>")
    banner = f'<p style="color:#b00;font-weight:bold">{html.escape(RANDOM_BANNER)}</p>' \
        if report["random_weights"] else ""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>benchmark</title></head><body>"
            f"<h1>Benchmark of {html.escape(str(report['checkpoint']))}</h1>{banner}"
            "<table border='1' cellpadding='4'><tr><th>item</th><th>ground truth</th><th>generated</th>"
            f"<th>scores</th></tr>{''.join(rows)}</table></body></html>\n")


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        items = read_test_set(args.test_set)
    except TestSetError as exc:
        raise BadInputError(str(exc)) from exc
    if args.max_items is not None:
        items = items[:args.max_items]
    if args.random_weights:
        warn_random("the whole benchmark")
        args.iqa_metric = args.iqa_metric if args.iqa_metric not in QALIGN_METRICS else "piqe"
    else:
        require(required_weights(args), args.weights_dir)  # one error naming every missing file
    out_dir = Path(args.out)
    models = MetricModels(args)
    per_item, generated, truths = [], [], []
    renderers: dict[str, Any] = {}
    for item in items:
        t0 = time.perf_counter()
        video, vector = render(item, args, out_dir, renderers)
        result, frames, truth = score_item(models, item, video, vector, args)
        result["elapsed_s"] = time.perf_counter() - t0
        per_item.append(result)
        generated.append(frames)
        if truth is not None:
            truths.append(truth)
        log.info("item %s: %d frames, Sync-C %s, IQA %.3g", item.id, len(frames),
                 fmt(result["generated"]["sync_c"]), result["generated"]["iqa"])
    aggregate = {side: {k: mean_of(per_item, key, k) for k in ("sync_c", "sync_d", "iqa", "vqa", "smooth")}
                 for side, key in (("generated", "generated"), ("ground_truth", "ground_truth_scores"))}
    aggregate["set"] = set_metrics(models, generated, truths, args.clip_len, args.fid_every)
    aggregate["motion_l2"] = motion_l2_means(per_item)
    report = {
        "random_weights": bool(args.random_weights), "warning": RANDOM_BANNER if args.random_weights else None,
        "checkpoint": str(args.checkpoint), "test_set": str(args.test_set), "n_items": len(per_item),
        "n_frames": int(sum(len(g) for g in generated)),
        "settings": {k: getattr(args, k) for k in ("max_frames", "max_items", "iqa_metric", "iqa_stride",
                                                     "min_track", "min_face_size", "clip_len", "fid_every", "sampler", "steps",
                                                     "cfg_scale", "seed", "face_backend", "device")},
        "variants": {"quality": models.quality_variant,
                     "sync": f"syncnet_python protocol (vshift 15), longest face track of >= {args.min_track} "
                             f"frames with faces >= {args.min_face_size:g} px ({args.face_backend} detector), "
                             "box grown by 0.40, 224x224",
                     "fvd": f"{aggregate['set']['fvd'].get('variant', 'FVD')}: {models.i3d.variant}; "
                            "non-overlapping clips, short side 224, centre crop, [-1, 1]",
                     "smooth": models.smooth_variant, "fid": models.fid.variant},
        "weights": models.weight_ids, "paper": PAPER_ROWS, "aggregate": aggregate, "items": per_item,
        "elapsed_s": time.perf_counter() - started,
    }
    write_text(out_dir / "results.json", json.dumps(report, indent=1, default=float))
    report["table"] = markdown(report)
    write_text(out_dir / "results.md", report["table"])
    write_text(out_dir / "index.html", html_page(report, out_dir))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.benchmark",
                                description="Render a test set with a checkpoint and score it as the paper does.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of training.run")
    p.add_argument("--test-set", required=True, help="CSV or Parquet list (training.test_set)")
    p.add_argument("--out", required=True, help="folder for videos/, results.json, results.md, index.html")
    p.add_argument("--max-items", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=None, help="render at most F frames per item (smoke runs)")
    p.add_argument("--iqa-metric", default="qalign", help="pyiqa no-reference metric (qalign: the paper's)")
    p.add_argument("--iqa-stride", type=int, default=1, help="IQA on every k-th frame")
    p.add_argument("--min-track", type=int, default=100, help="shortest face track scored (syncnet_python: 100)")
    p.add_argument("--min-face-size", type=float, default=100.0, help="smallest mean face side in px (100)")
    p.add_argument("--clip-len", type=int, default=25, help="FVD clip length (25: FVD-25)")
    p.add_argument("--fid-every", type=int, default=1, help="frame FID on every k-th frame")
    p.add_argument("--face-backend", default="haar", choices=("haar", "insightface"))
    p.add_argument("--animal", action="store_true")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--random-weights", action="store_true",
                   help="random networks and the piqe stand-in everywhere: tests and smoke runs only")
    sampling.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        report = benchmark(args)
    except (BadInputError, MissingWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report["table"])
    print(f"results in {args.out} (results.json, results.md, index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
