"""Small inputs and output readers shared by the pipeline's integration tests.

Real clips from the media folder are cut to about a second (the motion extractor runs 2 to 5
frames/s on two shared cores), synthesised clips come from ``pipeline.media_kit``, and the broken
inputs from ``make_broken_inputs``. Outputs are read back with the project's own readers.
"""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from shards.reader import iter_raw
from pipeline.media_kit import make_broken_inputs, make_clip

# Small settings: short clips, offline quality metric on two crops, scores only for the model
# filters (random weights give meaningless scores), a small audio encoder, frames at 360 px.
TEST_OVERRIDES = (
    "clips.min_len_s=0.6", "clips.max_len_s=0.8", "clips.cut_margin_s=0.1",
    "ray.num_cpus=2", "ray.torch_threads=1", "ray.model_workers=1", "decode.max_side=480", "faces.backend=haar",
    "filters.faces.min_face_px=32",
    "filters.quality.metric=piqe", "filters.quality.n_frames=2", "filters.quality.threshold=60",
    "filters.quality.mode=score", "filters.sync.mode=score", "filters.head_motion.mode=score",
    "models.audio_encoder.random_config=small",
    "progress.enabled=false",
)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every in-process run of the tests (starting Ray takes seconds).

    ``pipeline.build_shards`` keeps a session it finds already started and only creates its actors.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield
    ray.shutdown()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


def cut(src: Path, dst: Path, duration: float, scale: str | None = None) -> Path:
    """The first ``duration`` seconds of ``src``, re-encoded (H.264 + AAC), optionally scaled."""
    video = ["-vf", f"scale={scale}"] if scale else []
    ffmpeg("-i", str(src), "-t", f"{duration}", *video, "-c:v", "libx264", "-preset", "veryfast",
           "-c:a", "aac", str(dst))
    return dst


def write_list(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "dataset", "language", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def real_and_synthetic(folder: Path, media: Path) -> list[dict[str, Any]]:
    """Two real clips cut short (one leaves a too-short remnant), the real clip without audio, and a
    synthesised 29.97 fps clip with 48 kHz audio."""
    folder.mkdir(parents=True, exist_ok=True)
    synth = make_clip(folder / "synth_2997fps.mp4", fps=29.97, size=(320, 240), duration=0.8,
                      sample_rate=48000, channels=1, seed=5)
    return [
        {"path": str(cut(media / "lp_d20.mp4", folder / "real_d20.mp4", 1.0)), "dataset": "real",
         "language": "en", "speaker": "d20"},
        {"path": str(cut(media / "lp_s13.mp4", folder / "real_s13.mp4", 0.8, "480:720")),
         "dataset": "real", "language": "en", "speaker": "s13"},
        {"path": str(media / "carphone.mp4"), "dataset": "real", "language": "", "speaker": "car"},
        {"path": str(synth.path), "dataset": "synthetic", "language": "en", "speaker": "synth_2997fps"},
    ]


def broken(folder: Path) -> list[dict[str, Any]]:
    """Every broken input of the media kit. The valid mp4 named .txt is shortened to 0.8 s (still
    an mp4 under a .txt name), so the one broken input that yields clips costs a single clip."""
    paths = make_broken_inputs(folder)
    renamed = paths["mp4_as_txt"]
    short = cut(renamed, renamed.with_name("short.mp4"), 0.8)
    short.replace(renamed)
    return [{"path": str(path), "dataset": "broken", "language": None, "speaker": kind}
            for kind, path in paths.items()]


# ---------------------------------------------------------------------------------------- outputs

def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mtime_ns, sha256)} of every file below ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def manifests(out: Path) -> tuple[list[dict], list[dict]]:
    return (pq.read_table(out / "manifests" / "videos.parquet").to_pylist(),
            pq.read_table(out / "manifests" / "clips.parquet").to_pylist())


def shard_members(out: Path) -> dict[str, dict[str, str]]:
    """{shard name/key: {member: sha256}} of every sample in every shard."""
    samples = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        for raw in iter_raw(shard):
            key = raw.pop("__key__")
            samples[f"{shard.name}/{key}"] = {m: hashlib.sha256(b).hexdigest() for m, b in raw.items()}
    return samples


def run_json(out: Path) -> dict[str, Any]:
    return json.loads((out / "run.json").read_text())
