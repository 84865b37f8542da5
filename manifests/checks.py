"""Integrity checks of a pipeline output folder: manifests, shards and statistics must agree.

Three layers, cheapest first:

1. Metadata (always, vectorised over the Parquet tables; a million clip rows take seconds): the
   schema version is known and the columns are the schema's; clip ids are unique; every kept clip
   names a shard, key and checksums, every rejected clip a stage and reason; no key is used twice;
   a shard whose name says a split (``shard-NNNNNN-val.tar``) holds only clips of that split (older
   outputs name shards without a split and mix both: accepted, the trainer reads them by key);
   no split group (speaker, face identity or source video) is in both train and val, and no
   validation clip's face is within the identity threshold of a training clip's; frame counts
   match the clip spans; the videos table agrees with the clips; ``stats.json`` counts the training
   split's clips and frames; ``run.json`` is readable; a run that asked for a validation share got
   some (on outputs of ``identity.guard_min_videos`` videos or more).
2. Shard listing (always; reads tar headers only): every shard a kept clip names exists, reads to
   its end-of-archive marker, and lists exactly the members of its kept clips, no more, no less.
3. Content (``deep=True``; one process per shard): every member's sha256 matches the manifest,
   every sample decodes, arrays have the format's shapes and dtypes and are finite, and the
   statistics recomputed from the training split's samples match ``stats.json`` (by the same
   per-clip rule as the job, ``shards.stats``: moments merged clip by clip, trimmed ranges).

The folder may be local or an object-store URI (``s3://``, ``gs://``, with the job's endpoint
settings; ``shards.storage``): each remote shard is then downloaded once, sequentially, to a
temporary file in the worker that checks it.

A problem names its shard and sample key where it has them. Input that cannot be audited at all
(no folder, no manifests, unreadable Parquet, columns missing) raises :class:`UnusableOutput`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from manifests.schema import CLIPS, SCHEMA_VERSION, VIDEOS
from shards.identity import IDENTITY_THRESHOLDS, nearest
from shards.split import SPLITS, split_group
from shards import storage
from shards.stats import DatasetMoments
from shards.format import FPS, MEMBERS, shard_split, MOTION_SHAPES, SAMPLE_RATE, SAMPLES_PER_FRAME
from shards.reader import SampleError, decode_sample, iter_raw
from shards.vector import VECTOR_DIM

KNOWN_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})
KNOWN_STATS_VERSIONS = frozenset({1})
SCHEMA_VERSION_KEY = b"schema_version"
# Bulky JSON columns are read on demand, never kept in the clip table.
BULKY_COLUMNS = ("sha256", "model_ids", "weight_hashes", "face_embedding")
FRAME_TOLERANCE = 1  # frames between n_frames and the span times 25
# A recomputed statistic matches the file within this fraction of the dimension's spread.
STATS_TOLERANCE = 1e-2
TAR_BLOCK = 512
ESSENTIAL_CLIP_COLUMNS = ("clip_id", "video_id", "kept", "start_s", "end_s", "n_frames", "split",
                          "shard", "key", "sha256")
ESSENTIAL_VIDEO_COLUMNS = ("video_id", "status")
DICTIONARY_COLUMNS = ("thresholds",)


class UnusableOutput(Exception):
    """The folder cannot be audited at all (exit status 2)."""


@dataclass(frozen=True)
class Problem:
    check: str  # stable name, e.g. "missing_member", "checksum_mismatch", "split_leak"
    message: str
    shard: str | None = None
    key: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"check": self.check, "shard": self.shard, "key": self.key, "message": self.message}


@dataclass
class PipelineOutput:
    """A loaded output folder: the manifests as tables, the stats and run files as parsed JSON."""

    root: str  # a folder or a URI
    clips: pd.DataFrame  # every clip column except BULKY_COLUMNS
    videos: pd.DataFrame
    clips_schema: pa.Schema
    videos_schema: pa.Schema
    stats: dict[str, Any] | None
    stats_error: str | None
    run: dict[str, Any] | None
    run_error: str | None

    @property
    def clips_path(self) -> str:
        return storage.join(self.root, "manifests/clips.parquet")

    @property
    def shards_dir(self) -> str:
        return storage.join(self.root, "shards")

    def clip_column(self, name: str) -> pa.ChunkedArray:
        """One column read straight from the Parquet file (used for the bulky JSON columns)."""
        return storage.read_parquet(self.clips_path, columns=[name]).column(name)


def load_output(root: str | Path) -> PipelineOutput:
    """Read the manifests and side files of an output folder, or raise :class:`UnusableOutput`.

    A column of the schema that the file lacks is read as nulls (and reported by
    :func:`check_schema`); only a lack of the columns every check stands on makes the input unusable.
    """
    root = str(root)
    try:
        if not storage.is_dir(root):
            raise UnusableOutput(f"{root}: no such folder")
    except storage.StorageError as exc:
        raise UnusableOutput(str(exc)) from exc
    tables = {}
    for name, expected, essential in (("clips", CLIPS, ESSENTIAL_CLIP_COLUMNS),
                                      ("videos", VIDEOS, ESSENTIAL_VIDEO_COLUMNS)):
        path = storage.join(root, f"manifests/{name}.parquet")
        if not storage.is_file(path):
            raise UnusableOutput(f"{path}: manifest missing")
        try:
            schema = storage.read_parquet_schema(path)
            lacking = [c for c in essential if c not in schema.names]
            if lacking:
                raise UnusableOutput(f"{path}: columns missing: {', '.join(lacking)}")
            columns = [f.name for f in expected if f.name not in BULKY_COLUMNS and f.name in schema.names]
            # Low-cardinality strings stay dictionary-encoded (pandas categoricals): the thresholds
            # JSON repeats on every row and would otherwise cost a string per row.
            table = storage.read_parquet(path, columns=columns,
                                         read_dictionary=[c for c in DICTIONARY_COLUMNS if c in columns])
        except (pa.ArrowException, OSError) as exc:
            raise UnusableOutput(f"{path}: unreadable Parquet ({exc})") from exc
        for field_ in expected:
            if field_.name not in schema.names and field_.name not in BULKY_COLUMNS:
                table = table.append_column(field_, pa.nulls(len(table), field_.type))
        tables[name] = (table.to_pandas(), schema)
    stats, stats_error = _read_json(storage.join(root, "stats.json"))
    run, run_error = _read_json(storage.join(root, "run.json"))
    return PipelineOutput(root, tables["clips"][0], tables["videos"][0], tables["clips"][1],
                          tables["videos"][1], stats, stats_error, run, run_error)


def _read_json(path: str) -> tuple[dict[str, Any] | None, str | None]:
    name = path.rsplit("/", 1)[-1]
    if not storage.is_file(path):
        return None, f"{name} missing"
    try:
        data = json.loads(storage.read_bytes(path))
    except (OSError, ValueError) as exc:
        return None, f"{name} unreadable ({exc})"
    if not isinstance(data, dict):
        return None, f"{name} is not a JSON object"
    return data, None


# ---------------------------------------------------------------------------------------------
# 1. Metadata


def check_metadata(output: PipelineOutput) -> list[Problem]:
    """Every table-level check; vectorised, no per-row Python."""
    clips = output.clips
    kept = clips["kept"].fillna(False).astype(bool)
    problems = check_schema(output)
    problems += check_clip_rows(clips, kept)
    problems += check_checksum_column(output.clip_column("sha256"), kept.to_numpy())
    problems += check_split_leak(clips, kept)
    problems += check_shard_splits(clips, kept)
    problems += check_identity_leak(output, kept)
    problems += check_val_share(output, kept)
    problems += check_videos(output.videos, clips, kept)
    problems += check_stats_counts(output.stats, output.stats_error, clips, kept)
    if output.run_error:
        problems.append(Problem("run_file", output.run_error))
    return problems


def check_schema(output: PipelineOutput) -> list[Problem]:
    problems = []
    for name, schema, expected in (("clips", output.clips_schema, CLIPS),
                                   ("videos", output.videos_schema, VIDEOS)):
        raw = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
        version = raw.decode() if raw is not None else None
        if version is None:
            problems.append(Problem("schema_version", f"{name}.parquet has no schema_version metadata"))
        elif not version.isdigit() or int(version) not in KNOWN_SCHEMA_VERSIONS:
            known = ", ".join(str(v) for v in sorted(KNOWN_SCHEMA_VERSIONS))
            problems.append(Problem("schema_version",
                                    f"{name}.parquet schema_version {version!r} is not known ({known})"))
        for field_ in expected:
            if field_.name not in schema.names:
                problems.append(Problem("schema_columns", f"{name}.parquet lacks column {field_.name}"))
                continue
            actual = schema.field(field_.name).type
            if actual != field_.type:
                problems.append(Problem("schema_columns", f"{name}.parquet column {field_.name} "
                                                          f"is {actual}, expected {field_.type}"))
    return problems


def _rows_to_problems(check: str, rows: pd.DataFrame, message: str | Any) -> list[Problem]:
    """One problem per offending row; ``message`` is a string or a function of the row tuple."""
    out = []
    for row in rows.itertuples(index=False):
        text = message(row) if callable(message) else message
        out.append(Problem(check, text, _str_or_none(getattr(row, "shard", None)),
                           _str_or_none(getattr(row, "key", None))))
    return out


def _flagged(check: str, table: pd.DataFrame, mask: pd.Series, columns: list[str],
             message: Any) -> list[Problem]:
    """Problems for the rows under ``mask``; only those rows and columns are ever materialised,
    so a clean million-row manifest costs one vectorised mask per check."""
    if not mask.any():
        return []
    return _rows_to_problems(check, table.loc[mask.to_numpy(), columns], message)


def _str_or_none(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA else str(value)


def check_clip_rows(clips: pd.DataFrame, kept: pd.Series) -> list[Problem]:
    where = ["clip_id", "shard", "key"]
    first_dup_id = clips["clip_id"].duplicated(keep=False)
    if first_dup_id.any():
        first_dup_id &= ~clips["clip_id"].duplicated(keep="first")
    problems = _flagged("duplicate_clip_id", clips, first_dup_id, where,
                        lambda r: f"clip id {r.clip_id} appears more than once")
    problems += _flagged("rejection_fields", clips, clips["kept"].isna(), where,
                         lambda r: f"clip {r.clip_id}: kept is null")
    problems += _flagged("kept_without_sample", clips, kept & (clips["shard"].isna() | clips["key"].isna()),
                         where, lambda r: f"kept clip {r.clip_id} names no shard or key")
    rejected = ~kept & clips["kept"].notna()
    problems += _flagged("rejection_fields", clips, rejected & (clips["stage"].isna() | clips["reason"].isna()),
                         where, lambda r: f"rejected clip {r.clip_id} has no stage or reason")
    problems += _flagged("rejection_fields", clips, kept & (clips["stage"].notna() | clips["reason"].notna()),
                         where, lambda r: f"kept clip {r.clip_id} carries a rejection stage or reason")
    keys = clips["key"].where(kept)
    problems += _flagged("duplicate_key", clips, keys.duplicated(keep="first") & keys.notna(), where,
                         lambda r: f"key {r.key} is used by more than one kept clip")
    problems += _flagged("bad_split", clips, kept & ~clips["split"].isin(SPLITS), [*where, "split"],
                         lambda r: f"kept clip {r.clip_id} has split {r.split!r}, not train/val")
    span_frames = (clips["end_s"] - clips["start_s"]) * FPS
    off = kept & ((clips["n_frames"] - span_frames).abs() > FRAME_TOLERANCE)
    problems += _flagged("frame_count", clips, off, [*where, "n_frames", "start_s", "end_s"], lambda r: (
        f"clip {r.clip_id}: n_frames {r.n_frames} but span {r.start_s:.3f}-{r.end_s:.3f} s "
        f"is {(r.end_s - r.start_s) * FPS:.1f} frames"))
    return problems


def check_checksum_column(sha256: pa.ChunkedArray, kept: np.ndarray) -> list[Problem]:
    """Each kept clip's ``sha256`` JSON names every member with a 64-hex digest (regex, vectorised)."""
    column = sha256.filter(pa.array(kept))
    ok = pc.invert(pc.is_null(column))
    for member in MEMBERS:
        pattern = '"' + member.replace(".", r"\.") + r'"\s*:\s*"[0-9a-f]{64}"'
        ok = pc.and_kleene(ok, pc.match_substring_regex(column, pattern))
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False).astype(bool))
    if not len(bad):
        return []
    return [Problem("checksum_field", f"{len(bad)} kept clips have a missing or malformed sha256 "
                                      f"column (first at kept row {bad[0]})")]


def split_groups(clips: pd.DataFrame) -> pd.Series:
    """Each clip's split group: the recorded ``split_group`` (speaker, face identity or video),
    else ``shards.split.split_group`` of its speaker and source video."""
    speakers = clips["speaker"].astype(object).where(clips["speaker"].notna(), None)
    recorded = clips["split_group"] if "split_group" in clips else pd.Series(None, index=clips.index)
    return pd.Series([g if isinstance(g, str) and g else split_group(s, str(v))
                      for g, s, v in zip(recorded, speakers, clips["video_id"])],
                     index=clips.index, dtype=object)


def check_identity_leak(output: PipelineOutput, kept: pd.Series) -> list[Problem]:
    """Validation clips whose face is within the identity threshold (``shards.identity``) of a
    training clip's face, per embedding model: the same person on both sides of the split."""
    clips = output.clips
    if "face_embedding" not in output.clips_schema.names or clips["identity_backend"].isna().all():
        return []
    embeddings = output.clip_column("face_embedding").combine_chunks()
    valid = kept.to_numpy() & embeddings.is_valid().to_numpy(zero_copy_only=False)
    problems = []
    for backend, threshold in IDENTITY_THRESHOLDS.items():
        rows = valid & (clips["identity_backend"] == backend).to_numpy()
        train = np.flatnonzero(rows & (clips["split"] == "train").to_numpy())
        val = np.flatnonzero(rows & (clips["split"] == "val").to_numpy())
        if not len(train) or not len(val):
            continue
        distances, closest = nearest(_embedding_rows(embeddings, val), _embedding_rows(embeddings, train))
        for i in np.flatnonzero(distances < threshold):
            clip, other = clips.iloc[val[i]], clips.iloc[train[closest[i]]]
            problems.append(Problem(
                "identity_leak", f"val clip {clip['key']} ({split_groups(clips.iloc[[val[i]]]).iloc[0]}) is "
                f"{distances[i]:.2f} from the face of train clip {other['key']} in {other['shard']} "
                f"(same person under {threshold} with {backend})",
                _str_or_none(clip["shard"]), _str_or_none(clip["key"])))
    return problems


def check_val_share(output: PipelineOutput, kept: pd.Series) -> list[Problem]:
    """No kept clip in validation although the run asked for a share (``split.val_fraction`` in
    run.json), on an output of at least ``identity.guard_min_videos`` videos (default 200; below,
    a few groups may all hash to train by chance): typically one identity group holding most
    videos. Without run.json's config there is nothing to compare with."""
    config = (output.run or {}).get("config") or {}
    asked = float((config.get("split") or {}).get("val_fraction") or 0.0)
    minimum = int((config.get("identity") or {}).get("guard_min_videos", 200))
    clips = output.clips[kept]
    videos = clips["video_id"].nunique()
    if asked <= 0 or videos < minimum or (clips["split"] == "val").any():
        return []
    sizes = split_groups(clips).groupby(clips["video_id"]).first().value_counts()
    return [Problem("val_share", f"no kept clip is in validation although split.val_fraction is {asked:g}: "
                                 f"{videos} videos in {len(sizes)} split groups, the largest "
                                 f"({sizes.index[0]}) holding {100 * sizes.iloc[0] / videos:.1f}% of them")]


def _embedding_rows(embeddings: pa.ListArray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), D) float32 embeddings of those rows of the list column."""
    picked = embeddings.take(pa.array(rows))
    return np.asarray(picked.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(rows), -1)


def check_shard_splits(clips: pd.DataFrame, kept: pd.Series) -> list[Problem]:
    """A shard holds one split: every kept clip in a shard named for a split is of that split."""
    rows = clips.loc[(kept & clips["shard"].notna()).to_numpy(), ["clip_id", "shard", "key", "split"]]
    named = {name: shard_split(name) for name in rows["shard"].astype(str).unique()}
    says = rows["shard"].astype(str).map(named)
    wrong = says.notna() & (says != rows["split"])
    return _flagged("shard_split", rows.assign(says=says), wrong, ["clip_id", "shard", "key", "split", "says"],
                    lambda r: f"{r.split} clip {r.clip_id} is in a {r.says} shard")


def check_split_leak(clips: pd.DataFrame, kept: pd.Series) -> list[Problem]:
    in_split = kept & clips["split"].isin(SPLITS)
    pairs = pd.DataFrame({"group": split_groups(clips), "split": clips["split"]})[in_split]
    pairs = pairs.drop_duplicates()
    leaked = pairs.loc[pairs["group"].duplicated(), "group"]
    if leaked.empty:
        return []
    rows = clips.loc[in_split.to_numpy(), ["split", "shard", "key", "speaker", "video_id"]]
    rows["group"] = split_groups(rows)
    rows = rows[rows["group"].isin(leaked)]
    counts = rows.groupby(["group", "split"]).size().unstack(fill_value=0)
    problems = []
    for group, row in counts.iterrows():
        # Name one sample of the smaller side of each leaked group.
        minority = "val" if row.get("val", 0) <= row.get("train", 0) else "train"
        example = rows[(rows["group"] == group) & (rows["split"] == minority)].iloc[0]
        problems.append(Problem("split_leak", f"{group} has {row.get('train', 0)} train and "
                                              f"{row.get('val', 0)} val clips",
                                _str_or_none(example["shard"]), _str_or_none(example["key"])))
    return problems


def check_videos(videos: pd.DataFrame, clips: pd.DataFrame, kept: pd.Series) -> list[Problem]:
    problems = _flagged("video_rows", videos, videos["video_id"].duplicated(), ["video_id"],
                        lambda r: f"video id {r.video_id} appears more than once")
    orphan = ~clips["video_id"].isin(videos["video_id"]) & ~clips["video_id"].duplicated()
    problems += _flagged("video_rows", clips, orphan, ["video_id"],
                         lambda r: f"clips of video {r.video_id} but no video row")
    counted = kept.groupby(clips["video_id"]).agg(["size", "sum"])
    merged = videos.drop_duplicates("video_id").set_index("video_id")[["n_clips", "n_kept"]].join(counted)
    merged[["size", "sum"]] = merged[["size", "sum"]].fillna(0)
    wrong = (merged["n_clips"] != merged["size"]) | (merged["n_kept"] != merged["sum"])
    problems += _flagged("video_rows", merged.reset_index(), wrong.reset_index(drop=True),
                         ["video_id", "n_clips", "n_kept", "size", "sum"], lambda r: (
        f"video {r.video_id}: row says {r.n_clips} clips / {r.n_kept} kept, manifest has "
        f"{int(r.size)} / {int(r.sum)}"))
    return problems


def check_stats_counts(stats: dict | None, error: str | None, clips: pd.DataFrame,
                       kept: pd.Series) -> list[Problem]:
    """The stats file's shape and counts against the manifest's training split."""
    train = kept & (clips["split"] == "train")
    n_clips, n_frames = int(train.sum()), int(clips.loc[train, "n_frames"].sum())
    if stats is None:
        return [Problem("stats", error or "stats.json missing")] if n_clips else []
    problems = []

    def bad(message: str) -> None:
        problems.append(Problem("stats", f"stats.json: {message}"))

    if stats.get("format_version") not in KNOWN_STATS_VERSIONS:
        bad(f"format_version {stats.get('format_version')!r} is not known")
    if stats.get("split") != "train":
        bad(f"split is {stats.get('split')!r}, statistics must come from the training split")
    if stats.get("n_clips") != n_clips:
        bad(f"n_clips {stats.get('n_clips')} but the manifest has {n_clips} kept train clips")
    if stats.get("n_frames") != n_frames:
        bad(f"n_frames {stats.get('n_frames')} but the manifest's kept train clips have {n_frames}")
    for section, names, dim in (("vector", ("mean", "std", "min", "max"), VECTOR_DIM),
                                ("audio_feat", ("mean", "std"), None)):
        block = stats.get(section)
        if not isinstance(block, dict):
            bad(f"section {section!r} missing")
            continue
        dim = dim if dim is not None else block.get("dim")
        if block.get("dim") != dim:
            bad(f"{section}.dim is {block.get('dim')!r}, expected {dim}")
        for name in names:
            values = np.asarray(block.get(name, []), dtype=np.float64)
            if values.shape != (dim,):
                bad(f"{section}.{name} has shape {values.shape}, expected ({dim},)")
            elif not np.isfinite(values).all():
                bad(f"{section}.{name} holds NaN or Inf")
            elif name == "std" and (values < 0).any():
                bad(f"{section}.std has negative entries")
    return problems


# ---------------------------------------------------------------------------------------------
# 2 and 3. Shards: listing always, content behind deep


@dataclass
class ShardReport:
    """What one worker found in one shard."""

    name: str
    exists: bool = True
    members: list[str] = field(default_factory=list)  # member names, in file order
    error: str | None = None  # unreadable or truncated: the listing stops there
    error_key: str | None = None
    problems: list[Problem] = field(default_factory=list)  # content problems (deep)
    moments: DatasetMoments = field(default_factory=DatasetMoments)  # training-split samples seen (deep)
    samples_read: int = 0
    train_samples_ok: int = 0  # training samples read without any problem, counted in the moments


@dataclass(frozen=True)
class ExpectedSample:
    sha256: str  # the manifest's JSON {member: sha256}
    n_frames: int
    split: str

    @property
    def train(self) -> bool:
        return self.split == "train"


def list_shard(path: str, report: ShardReport) -> None:
    """Read the tar headers (seeking past the data); a tar must end with its end-of-archive
    marker after the last member."""
    size = storage.file_size(path)
    if size is None:
        report.exists = False
        return
    end = 0
    try:
        with storage.open_input(path) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                report.members.append(info.name)
                end = info.offset_data + -(-info.size // TAR_BLOCK) * TAR_BLOCK
                if end > size:
                    raise tarfile.ReadError(f"member {info.name} runs past the end of the file")
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.error = f"truncated or unreadable: {exc}"
    else:
        with storage.open_input(path) as handle:
            handle.seek(end)
            marker = handle.read(2 * TAR_BLOCK)
        if len(marker) < 2 * TAR_BLOCK or marker.strip(b"\0"):
            report.error = (f"truncated or unreadable: no end-of-archive marker after byte {end} "
                            f"(file has {size} bytes)")
    if report.error and report.members:
        report.error_key = report.members[-1].partition(".")[0]


def inspect_shard(path: str, expected: dict[str, ExpectedSample] | None) -> ShardReport:
    """List one shard, and with ``expected`` (deep mode) read and verify every sample in it."""
    report = ShardReport(path.rsplit("/", 1)[-1])
    if storage.has_scheme(path) and storage.file_size(path) is not None:
        # One sequential download: ranged reads would save bytes on S3 and GCS, but not every
        # S3/GCS-compatible server answers them (the GCS emulator ignores Range and stalls).
        with tempfile.TemporaryDirectory(prefix="th_audit_") as folder:
            local = os.path.join(folder, report.name)
            with storage.open_stream(path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            return _inspect_local(local, expected, report)
    return _inspect_local(path, expected, report)


def _inspect_local(path: str, expected: dict[str, ExpectedSample] | None, report: ShardReport) -> ShardReport:
    list_shard(path, report)
    if not expected or not report.exists:
        return report  # listing only, or no kept clip lives in this shard
    try:
        with open(path, "rb") as stream:
            for raw in iter_raw(stream):
                report.samples_read += 1
                key = raw["__key__"]
                if key in expected:
                    _check_sample(raw, expected[key], report)
    except (tarfile.TarError, OSError, EOFError) as exc:
        if report.error is None:
            report.error = f"truncated or unreadable: {exc}"
    return report


def _check_sample(raw: dict[str, Any], expected: ExpectedSample, report: ShardReport) -> None:
    key = raw["__key__"]

    def problem(check: str, message: str) -> None:
        report.problems.append(Problem(check, message, report.name, key))

    try:
        digests = json.loads(expected.sha256)
    except (TypeError, ValueError):
        digests = {}
    for member in MEMBERS:
        if member in raw and member in digests:
            actual = hashlib.sha256(raw[member]).hexdigest()
            if actual != digests[member]:
                problem("checksum_mismatch", f"{member}: sha256 {actual[:12]}… but the manifest "
                                             f"says {str(digests[member])[:12]}…")
    if any(member not in raw for member in MEMBERS):
        return  # the listing reports missing members
    try:
        sample = decode_sample(raw)
    except SampleError as exc:
        problem("bad_member", str(exc))
        return
    for check, message in sample_problems(sample, expected.n_frames):
        problem(check, message)
    meta = sample["meta"] if isinstance(sample["meta"], dict) else {}
    if meta.get("split", expected.split) != expected.split:
        # The pipeline computes the statistics by the split its samples record.
        problem("meta_mismatch", f"sample says split {meta['split']!r}, the manifest {expected.split!r}")
    if expected.train and not any(p.key == key for p in report.problems):
        report.moments.add_sample(sample["motion"], sample["audio_feat"])
        report.train_samples_ok += 1


def sample_problems(sample: dict[str, Any], n_frames: int) -> list[tuple[str, str]]:
    """Shape, dtype and finiteness of one decoded sample, per ``shards/format.py``."""
    found: list[tuple[str, str]] = []
    motion = sample["motion"]
    absent = [name for name in MOTION_SHAPES if name not in motion]
    if absent:
        return [("bad_member", f"motion.npz lacks {', '.join(absent)}")]
    n = motion["exp"].shape[0] if motion["exp"].ndim else -1
    arrays = {f"motion.{name}": (motion[name], (n, *shape), np.float32)
              for name, shape in MOTION_SHAPES.items()}
    feat = sample["audio_feat"]
    arrays["audio_feat"] = (feat, (n, feat.shape[1] if feat.ndim == 2 else -1), np.float16)
    for name, (array, shape, dtype) in arrays.items():
        if array.shape != shape:
            found.append(("bad_shape", f"{name} has shape {array.shape}, expected {shape}"))
        if array.dtype != dtype:
            found.append(("bad_dtype", f"{name} is {array.dtype}, expected {np.dtype(dtype)}"))
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            found.append(("non_finite", f"{name} holds {bad} NaN or Inf values"))
    audio = sample["audio"]
    if sample.get("sample_rate") != SAMPLE_RATE or audio.ndim != 1 or audio.dtype != np.int16:
        found.append(("bad_dtype", (f"audio.flac is {audio.dtype} {audio.ndim}-D at {sample.get('sample_rate')} "
                                    f"Hz, expected int16 mono {SAMPLE_RATE} Hz")))
    elif audio.shape[0] != n * SAMPLES_PER_FRAME:
        found.append(("bad_shape", (f"audio.flac has {audio.shape[0]} samples, expected "
                                    f"{n} frames x {SAMPLES_PER_FRAME} = {n * SAMPLES_PER_FRAME}")))
    if n != n_frames:
        found.append(("frame_count", f"motion has {n} frames, the manifest says {n_frames}"))
    if not isinstance(sample["meta"], dict):
        found.append(("bad_member", "json member is not an object"))
    return found


def check_shards(output: PipelineOutput, deep: bool = False, workers: int | None = None
                 ) -> tuple[list[Problem], dict[str, int]]:
    """Listing (and with ``deep`` content) checks of every shard named or present."""
    clips = output.clips
    kept = clips["kept"].fillna(False).astype(bool) & clips["shard"].notna() & clips["key"].notna()
    kept_rows = clips.loc[kept, ["clip_id", "shard", "key", "n_frames", "split"]]
    present = storage.list_names(output.shards_dir, ".tar")
    names = sorted(set(kept_rows["shard"].astype(str)) | set(present))
    expected = _expected_samples(output, kept_rows, kept) if deep else {}
    reports = _run_per_shard(output.shards_dir, names, expected if deep else None, workers)
    problems = compare_listings(reports, kept_rows, clips)
    for report in reports:
        problems += report.problems
    counts = {"shards": len(names), "shard_members": sum(len(r.members) for r in reports),
              "samples_read": sum(r.samples_read for r in reports)}
    if deep:
        # Statistics are only comparable when every training sample was read cleanly; a damaged
        # sample is already reported and would only add a second, derived complaint.
        n_train = sum(e.train for samples in expected.values() for e in samples.values())
        counts["stats_recomputed"] = int(n_train == sum(r.train_samples_ok for r in reports))
        if counts["stats_recomputed"]:
            problems += compare_stats(output.stats, reports)
    return _dedupe(problems), counts


def _expected_samples(output: PipelineOutput, kept_rows: pd.DataFrame, kept: pd.Series
                      ) -> dict[str, dict[str, ExpectedSample]]:
    sha256 = output.clip_column("sha256").filter(pa.array(kept.to_numpy())).to_pylist()
    by_shard: dict[str, dict[str, ExpectedSample]] = {}
    for shard, key, n_frames, split, digests in zip(kept_rows["shard"], kept_rows["key"],
                                                    kept_rows["n_frames"], kept_rows["split"], sha256):
        by_shard.setdefault(shard, {})[key] = ExpectedSample(digests, int(n_frames), str(split))
    return by_shard


def _run_per_shard(folder: str, names: list[str], expected: dict | None,
                   workers: int | None) -> list[ShardReport]:
    tasks = [(storage.join(folder, name), None if expected is None else expected.get(name, {}))
             for name in names]
    workers = workers or min(os.cpu_count() or 1, max(len(tasks), 1))
    if workers <= 1 or len(tasks) <= 1:
        return [inspect_shard(*task) for task in tasks]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(inspect_shard, *zip(*tasks), chunksize=max(1, len(tasks) // (4 * workers))))


def compare_listings(reports: list[ShardReport], kept_rows: pd.DataFrame,
                     clips: pd.DataFrame) -> list[Problem]:
    """Listed members against the kept clips, as two joined tables (vectorised)."""
    problems = []
    for report in reports:
        if not report.exists:
            n = int((kept_rows["shard"] == report.name).sum())
            problems.append(Problem("missing_shard", f"shard file missing ({n} kept clips name it)",
                                    report.name))
        elif report.error:
            problems.append(Problem("truncated_shard", report.error, report.name, report.error_key))
    listed = pd.DataFrame([(r.name, m) for r in reports for m in r.members], columns=["shard", "name"])
    # WebDataset's convention: the key is the member name up to its first dot.
    split_names = listed["name"].str.partition(".")
    listed["key"] = split_names[0] if len(listed) else pd.Series(dtype=str)
    listed["member"] = split_names[2] if len(listed) else pd.Series(dtype=str)

    dup = listed[listed.duplicated(["shard", "name"], keep="first")]
    problems += _rows_to_problems("duplicate_member", dup,
                                  lambda r: f"member {r.name} appears more than once in the tar")
    listed = listed.drop_duplicates(["shard", "name"])

    expected = kept_rows[["shard", "key"]].merge(pd.DataFrame({"member": list(MEMBERS)}), how="cross")
    readable = {r.name for r in reports if r.exists}
    expected = expected[expected["shard"].isin(readable)]
    both = expected.merge(listed, on=["shard", "key", "member"], how="outer", indicator=True)

    missing = both[both["_merge"] == "left_only"]
    problems += _rows_to_problems("missing_member", missing,
                                  lambda r: f"member {r.key}.{r.member} is not in the tar")
    extra = both[both["_merge"] == "right_only"]
    if len(extra):
        home = kept_rows.drop_duplicates("key").set_index("key")["shard"]
        extra = extra.assign(home=extra["key"].map(home))
        other_shard = extra[extra["home"].notna() & (extra["home"] != extra["shard"])]
        problems += _rows_to_problems("duplicate_key", other_shard.drop_duplicates(["shard", "key"]),
                                      lambda r: f"sample {r.key} is also in {r.home}, where the "
                                                f"manifest puts it")
        stray_member = extra[extra["home"] == extra["shard"]]
        problems += _rows_to_problems("unexpected_member", stray_member,
                                      lambda r: f"member {r.name} is not part of the sample format")
        unknown = extra[extra["home"].isna()].drop_duplicates(["shard", "key"])
        unknown = unknown.assign(rejected=unknown["key"].isin(clips["clip_id"]))
        problems += _rows_to_problems("unexpected_sample", unknown, lambda r: (
            f"sample {r.key} belongs to a rejected clip" if r.rejected
            else f"sample {r.key} is not a kept clip of the manifest"))
    return problems


def compare_stats(stats: dict | None, reports: Iterable[ShardReport]) -> list[Problem]:
    """Statistics recomputed from the training split's samples against ``stats.json``."""
    moments = DatasetMoments()
    for report in reports:
        moments.merge(report.moments)
    vector, audio = moments.vector, moments.audio_feat
    if stats is None or vector.n == 0:
        return []
    problems = []
    if stats.get("n_frames") != vector.n:
        problems.append(Problem("stats", f"stats.json: n_frames {stats.get('n_frames')} but the "
                                         f"training samples read hold {vector.n} frames"))
    for section, moments, names in (("vector", vector, ("mean", "std", "min", "max")),
                                    ("audio_feat", audio, ("mean", "std"))):
        block = stats.get(section) or {}
        spread = np.maximum(moments.std, 1e-6)
        recomputed = {"mean": moments.mean, "std": moments.std, "min": moments.min, "max": moments.max}
        for name in names:
            values = np.asarray(block.get(name, []), dtype=np.float64)
            if values.shape != recomputed[name].shape:
                continue  # already reported by the metadata checks
            off = np.abs(values - recomputed[name]) > STATS_TOLERANCE * spread + 1e-6
            if off.any():
                dim = int(np.argmax(off))
                problems.append(Problem("stats", (
                    f"stats.json: {section}.{name} differs from the training split in {int(off.sum())} "
                    f"dims (dim {dim}: file {values[dim]:.6g}, recomputed {recomputed[name][dim]:.6g})")))
    return problems


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Drop exact repeats (a sample stored twice in one shard is checked twice)."""
    return list(dict.fromkeys(problems))


@dataclass
class AuditResult:
    problems: list[Problem]
    counts: dict[str, int]
    deep: bool

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(output: PipelineOutput, deep: bool = False, workers: int | None = None) -> AuditResult:
    """All checks: metadata, shard listings, and with ``deep`` the shard contents and statistics."""
    problems = check_metadata(output)
    shard_problems, counts = check_shards(output, deep=deep, workers=workers)
    kept = int(output.clips["kept"].fillna(False).sum())
    counts = {"videos": len(output.videos), "clips": len(output.clips), "kept": kept, **counts}
    return AuditResult(problems + shard_problems, counts, deep)
