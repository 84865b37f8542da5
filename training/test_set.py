"""A benchmark's test set: what to animate, with what speech, against what ground truth.

A test set is a CSV or Parquet list, one row per item, with the columns

- ``id``: a unique name (file names of the results are made from it);
- ``reference``: the portrait, an image, or a video whose first frame is the portrait;
- ``audio``: the speech (any format ``models.audio_encoder.load_audio`` reads, videos included);
- ``ground_truth`` (optional, may be empty): the real video of that speech, for FVD, FID and the
  Sync-C/D ceiling;
- ``speaker`` (optional): who is in it, so a reader can check people are not repeated;
- ``motion`` (optional): a ``.npy`` of the ground truth's motion vectors (T, 70), frame-aligned with
  it (the builder takes them from the clip's shard), for the motion metrics against the truth.

Relative paths are relative to the list's folder. ``build_from_pipeline`` makes one the way the
JoyVASA paper made its CelebV-HQ test set: validation-split clips (people never seen in training,
the pipeline's split keeps identities apart) of 5-15 s, at most ``per_speaker`` clips from each of
``max_speakers`` people, the clip's first frame as the portrait and its audio and video as ground
truth, its shard's motion as the true motion.

::

    python -m training.test_set build --pipeline-out OUT --out testset/ [--per-speaker 2] [--max-speakers 50]
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import soundfile as sf

from shards.format import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)

COLUMNS = ("id", "reference", "audio", "ground_truth", "speaker", "motion")
REQUIRED = ("id", "reference", "audio")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_CLIP_S = 5.0   # the paper's clip lengths
MAX_CLIP_S = 15.0
LIST_NAME = "test_set.csv"


class TestSetError(ValueError):
    """A test set list that cannot be used: missing columns or files, duplicate ids."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class TestItem:
    """One row: absolute paths; ``ground_truth`` and ``motion`` None when the item has none."""

    __test__ = False  # not a pytest test class

    id: str
    reference: Path
    audio: Path
    ground_truth: Path | None = None
    speaker: str | None = None
    motion: Path | None = None

    @property
    def reference_is_video(self) -> bool:
        return self.reference.suffix.lower() not in IMAGE_SUFFIXES


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise TestSetError(f"test set list not found: {path}")
    if path.suffix.lower() == ".parquet":
        return pq.read_table(path)
    if path.suffix.lower() == ".csv":
        strings = {name: pa.string() for name in COLUMNS}
        return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=strings,
                                                                            strings_can_be_null=True))
    raise TestSetError(f"a test set is a .csv or .parquet list, got {path}")


def read_test_set(path: str | Path) -> list[TestItem]:
    """The items of a list, every file checked to exist (one error naming all that do not)."""
    path = Path(path)
    table = _read_table(path)
    missing_columns = [c for c in REQUIRED if c not in table.column_names]
    if missing_columns:
        raise TestSetError(f"{path} lacks the column(s) {', '.join(missing_columns)} "
                           f"(columns: {', '.join(COLUMNS)}; ground_truth, speaker and motion optional)")
    base = path.parent

    def resolve(value: object) -> Path | None:
        if value is None or str(value).strip() == "":
            return None
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    items, problems, seen = [], [], set()
    for n, row in enumerate(table.to_pylist(), start=1):
        item_id = str(row.get("id") or "").strip()
        reference, audio, truth, motion = (resolve(row.get(c)) for c in ("reference", "audio", "ground_truth",
                                                                         "motion"))
        if not item_id:
            problems.append(f"row {n}: empty id")
            continue
        if item_id in seen:
            problems.append(f"row {n}: duplicate id {item_id!r}")
        seen.add(item_id)
        for column, p in (("reference", reference), ("audio", audio), ("ground_truth", truth), ("motion", motion)):
            if p is None and column in REQUIRED:
                problems.append(f"row {n} ({item_id}): empty {column}")
            elif p is not None and not p.is_file():
                problems.append(f"row {n} ({item_id}): {column} not found: {p}")
        speaker = row.get("speaker")
        items.append(TestItem(item_id, reference, audio, truth, None if speaker is None else str(speaker), motion))
    if problems:
        raise TestSetError(f"test set {path} is not usable:\n  " + "\n  ".join(problems))
    if not items:
        raise TestSetError(f"test set {path} has no rows")
    return items


def write_test_set(items: Sequence[TestItem], path: str | Path) -> Path:
    """Write the list as CSV (paths relative to its folder where they are inside it)."""
    path = Path(path)
    base = path.parent.resolve()

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        p = Path(p).resolve()
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    rows = [{**asdict(item), "reference": rel(item.reference), "audio": rel(item.audio),
             "ground_truth": rel(item.ground_truth), "motion": rel(item.motion)} for item in items]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in COLUMNS]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pa_csv.write_csv(table, tmp)
    tmp.replace(path)
    return path


def reference_portrait(item: TestItem) -> np.ndarray:
    """The portrait as (H, W, 3) uint8 RGB: the image, or a video's first frame."""
    if item.reference_is_video:
        from training.metrics.video_io import read_frames

        return read_frames(item.reference, max_frames=1)[0]
    image = cv2.imread(str(item.reference), cv2.IMREAD_COLOR)
    if image is None:
        raise TestSetError(f"cannot read the portrait {item.reference}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- the paper's builder

def select_clips(clips: pa.Table, min_s: float = MIN_CLIP_S, max_s: float = MAX_CLIP_S,
                 per_speaker: int = 2, max_speakers: int = 50) -> list[dict]:
    """Kept validation clips of ``min_s``..``max_s`` s, ``per_speaker`` per identity group (in
    manifest order), from at most ``max_speakers`` groups; groups also seen in training are left out."""
    rows = clips.to_pylist()
    train_groups = {r["split_group"] for r in rows if r.get("split") == "train" and r.get("split_group")}
    chosen: dict[str, list[dict]] = {}
    for r in rows:
        duration = float(r["end_s"]) - float(r["start_s"])
        group = r.get("split_group") or r.get("speaker") or r["video_id"]
        if not r.get("kept") or r.get("split") != "val" or not (min_s - 1e-6 <= duration <= max_s + 1e-6):
            continue
        if group in train_groups:
            log.warning("clip %s: identity group %s is also in the training split; left out", r["clip_id"], group)
            continue
        if group not in chosen and len(chosen) >= max_speakers:
            continue
        if len(chosen.setdefault(group, [])) < per_speaker:
            chosen[group].append({**r, "group": group})
    return [r for group in chosen.values() for r in group]


def clip_motions(pipeline_out: Path, clips: Sequence[dict]) -> dict[str, np.ndarray]:
    """clip id -> the clip's motion vectors (T, 70) from its shard (``OUT/shards/<shard>``), each
    shard read once and only until its wanted keys are found; a clip whose shard or key is missing
    gets none (a warning)."""
    from shards.reader import decode_sample, iter_raw
    from shards.vector import motion_to_vector

    wanted: dict[str, dict[str, str]] = {}  # shard -> sample key -> clip id
    for clip in clips:
        wanted.setdefault(str(clip.get("shard") or ""), {})[str(clip.get("key"))] = clip["clip_id"]
    motions: dict[str, np.ndarray] = {}
    for name, keys in wanted.items():
        shard = pipeline_out / "shards" / name
        if name and shard.is_file():
            for raw in iter_raw(shard):
                if raw["__key__"] in keys:
                    motions[keys.pop(raw["__key__"])] = motion_to_vector(decode_sample(raw, with_audio=False)["motion"])
                    if not keys:
                        break
        for key, clip_id in keys.items():
            log.warning("clip %s: sample %s not found in shard %s; the item gets no true motion", clip_id, key, shard)
    return motions


def write_item(clip: dict, out_dir: Path, crf: int = 18, motion: np.ndarray | None = None) -> TestItem:
    """Cut one clip from its source: portrait PNG, speech WAV, ground-truth MP4 (25 fps, with the
    speech), and its true motion as ``.npy`` when given."""
    from training.metrics.video_io import read_frames, read_speech_span
    from training.video_out import TalkingVideoWriter

    source = Path(clip["source"])
    if not source.is_file():
        raise TestSetError(f"clip {clip['clip_id']}: source {source} is not a local file "
                           "(copy the sources locally to build a test set)")
    start, end = float(clip["start_s"]), float(clip["end_s"])
    frames = read_frames(source, start, end)
    audio = read_speech_span(source, start, end)
    item_id = str(clip["clip_id"])[:12]
    folder = out_dir / "items"
    folder.mkdir(parents=True, exist_ok=True)
    portrait, speech, truth = folder / f"{item_id}.png", folder / f"{item_id}.wav", folder / f"{item_id}.mp4"
    cv2.imwrite(str(portrait), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    sf.write(speech, audio, SAMPLE_RATE, subtype="PCM_16")
    height, width = frames.shape[1:3]
    with TalkingVideoWriter(truth, width, height, audio, fps=FPS, crf=crf) as video:
        video.write(frames)
    motion_path = None
    if motion is not None:
        motion_path = folder / f"{item_id}.motion.npy"
        np.save(motion_path, motion.astype(np.float32))
    return TestItem(item_id, portrait, speech, truth, str(clip["group"]), motion_path)


def build_from_pipeline(pipeline_out: str | Path, out_dir: str | Path, min_s: float = MIN_CLIP_S,
                        max_s: float = MAX_CLIP_S, per_speaker: int = 2, max_speakers: int = 50) -> Path:
    """Make ``out_dir/test_set.csv`` and its media from a pipeline output's clip manifest."""
    manifest = Path(pipeline_out) / "manifests" / "clips.parquet"
    if not manifest.is_file():
        raise TestSetError(f"no clip manifest at {manifest}; pass the pipeline's output folder")
    clips = select_clips(pq.read_table(manifest), min_s, max_s, per_speaker, max_speakers)
    if not clips:
        raise TestSetError(f"{manifest} has no kept validation clips of {min_s:g}-{max_s:g} s")
    out_dir = Path(out_dir)
    motions = clip_motions(Path(pipeline_out), clips)
    items = [write_item(clip, out_dir, motion=motions.get(clip["clip_id"])) for clip in clips]
    log.info("test set: %d clips of %d people", len(items), len({i.speaker for i in items}))
    return write_test_set(items, out_dir / LIST_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m training.test_set", description="Build or check a test set.")
    sub = p.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="from a pipeline output, the way the paper does")
    build.add_argument("--pipeline-out", required=True, help="the pipeline's OUT folder (manifests/clips.parquet)")
    build.add_argument("--out", required=True, help="folder for test_set.csv and items/")
    build.add_argument("--min-s", type=float, default=MIN_CLIP_S)
    build.add_argument("--max-s", type=float, default=MAX_CLIP_S)
    build.add_argument("--per-speaker", type=int, default=2)
    build.add_argument("--max-speakers", type=int, default=50)
    check = sub.add_parser("check", help="read a list and check every file exists")
    check.add_argument("list")
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            path = build_from_pipeline(args.pipeline_out, args.out, args.min_s, args.max_s, args.per_speaker,
                                       args.max_speakers)
            print(f"wrote {path} ({len(read_test_set(path))} items)")
        else:
            print(f"{args.list}: {len(read_test_set(args.list))} items, all files present")
    except TestSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
