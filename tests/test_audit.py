"""The manifest audit: a clean output passes; each kind of damage is named with its shard and key;
the summary, the offline HTML report and re-thresholding work on a known output."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from manifests.audit import main
from manifests.schema import CLIPS, SCHEMA_VERSION
from tests.output_fixture import FixtureOutput, build_output

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def clean(tmp_path_factory) -> FixtureOutput:
    return build_output(tmp_path_factory.mktemp("audit") / "out")


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    """A private copy of the clean output to damage (the source videos stay shared)."""
    return Path(shutil.copytree(clean.root, tmp_path / "out"))


def run_audit(root: Path, *extra: str, capsys) -> tuple[int, dict]:
    code = main([str(root), "--json", "--workers", "2", *extra])
    return code, json.loads(capsys.readouterr().out)


# ---- helpers that damage a copy the way real failures do -----------------------------------


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def replace_member(root: Path, shard: str, name: str, data: bytes, update_checksum: bool = True) -> None:
    """Swap one member's bytes; with ``update_checksum`` the manifest agrees with the new bytes,
    so only the content check itself can notice."""
    path = root / "shards" / shard
    write_tar(path, [(n, data if n == name else d) for n, d in read_tar(path)])
    if update_checksum:
        key, _, member = name.partition(".")
        table = pq.read_table(root / "manifests" / "clips.parquet")
        sha = table.column("sha256").to_pylist()
        keys = table.column("key").to_pylist()
        row = keys.index(key)
        digests = json.loads(sha[row])
        digests[member] = hashlib.sha256(data).hexdigest()
        sha[row] = json.dumps(digests, sort_keys=True)
        write_clips(root, table.set_column(table.schema.get_field_index("sha256"), "sha256",
                                           pa.array(sha, pa.string())))


def write_clips(root: Path, table: pa.Table) -> None:
    pq.write_table(table, root / "manifests" / "clips.parquet")


def member_bytes(root: Path, shard: str, name: str) -> bytes:
    return dict(read_tar(root / "shards" / shard))[name]


def edited_npz(data: bytes, edit: Callable[[dict], None]) -> bytes:
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def a_kept_clip(clean: FixtureOutput, split: str = "train", shard: str | None = None):
    return next(c for c in clean.kept if c.split == split and (shard is None or c.shard == shard))


def has(report: dict, check: str, shard: str | None, key: str | None) -> bool:
    return any(p["check"] == check and p["shard"] == shard and p["key"] == key
               for p in report["problems"])


def checks_found(report: dict) -> set[str]:
    return {p["check"] for p in report["problems"]}


# ---- clean and unusable ------------------------------------------------------------------------


def test_clean_output_passes_deep(clean, capsys):
    code, report = run_audit(clean.root, "--deep", capsys=capsys)
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["counts"]["samples_read"] == len(clean.kept)
    assert report["counts"]["stats_recomputed"] == 1
    assert report["counts"]["shards"] == len({c.shard for c in clean.kept}) >= 2


def test_cli_module_prints_tables(clean):
    done = subprocess.run([sys.executable, "-m", "manifests.audit", str(clean.root)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Audit (metadata + shard listing): OK" in done.stdout
    assert "Kept by dataset" in done.stdout and "private_zh" in done.stdout


def test_unusable_inputs_exit_2(copy, tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    (copy / "manifests" / "clips.parquet").write_bytes(b"not parquet at all")
    assert main([str(copy)]) == 2
    assert "unreadable Parquet" in capsys.readouterr().err


# ---- each kind of damage -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["inside a member", "between samples"])
def test_truncated_tar(clean, copy, capsys, where):
    shard = "shard-000000.tar"
    path = copy / "shards" / shard
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    if where == "inside a member":
        cut = int(path.stat().st_size * 0.6)
        member = next(m for m in members if m.offset <= cut < m.offset_data + m.size)
        named = member.name.partition(".")[0]  # the sample whose member the cut falls into
        lost = named
    else:  # a clean cut before a sample's first header: only the end-of-archive marker is missing
        first = next(i for i, m in enumerate(members) if i >= 4 and m.name.endswith(".motion.npz"))
        cut = members[first].offset
        named = members[first - 1].name.partition(".")[0]  # the last sample still complete
        lost = members[first].name.partition(".")[0]
    with path.open("r+b") as handle:
        handle.truncate(cut)
    code, report = run_audit(copy, capsys=capsys)
    assert code == 1
    assert has(report, "truncated_shard", shard, named)
    assert has(report, "missing_member", shard, lost)
    assert checks_found(report) <= {"truncated_shard", "missing_member"}


def test_flipped_bytes_fail_the_checksum(clean, copy, capsys):
    clip = a_kept_clip(clean)
    name = f"{clip.clip_id}.audio_feat.npy"
    data = bytearray(member_bytes(copy, clip.shard, name))
    data[200:208] = bytes(b ^ 0x5A for b in data[200:208])
    replace_member(copy, clip.shard, name, bytes(data), update_checksum=False)
    assert main([str(copy), "--json"]) == 0, "flipped bytes are found by --deep only"
    capsys.readouterr()
    code, report = run_audit(copy, "--deep", capsys=capsys)
    assert code == 1
    assert has(report, "checksum_mismatch", clip.shard, clip.clip_id)
    assert checks_found(report) <= {"checksum_mismatch", "non_finite"}


def test_deleted_member(clean, copy, capsys):
    clip = a_kept_clip(clean, "val")
    path = copy / "shards" / clip.shard
    write_tar(path, [(n, d) for n, d in read_tar(path) if n != f"{clip.clip_id}.audio.flac"])
    code, report = run_audit(copy, "--deep", capsys=capsys)
    assert code == 1
    assert has(report, "missing_member", clip.shard, clip.clip_id)
    assert checks_found(report) == {"missing_member"}


def test_duplicate_key_in_a_second_shard(clean, copy, capsys):
    clip = a_kept_clip(clean)
    other = next(c.shard for c in clean.kept if c.shard != clip.shard)
    sample = [(n, d) for n, d in read_tar(copy / "shards" / clip.shard) if n.startswith(clip.clip_id)]
    write_tar(copy / "shards" / other, read_tar(copy / "shards" / other) + sample)
    code, report = run_audit(copy, "--deep", capsys=capsys)
    assert code == 1
    assert has(report, "duplicate_key", other, clip.clip_id)
    assert checks_found(report) == {"duplicate_key"}


def test_stray_shard_with_a_rejected_clip(clean, copy, capsys):
    rejected = next(c for c in clean.clips if c.outcome != "kept")
    donor = a_kept_clip(clean)
    sample = [(n.replace(donor.clip_id, rejected.clip_id), d)
              for n, d in read_tar(copy / "shards" / donor.shard) if n.startswith(donor.clip_id)]
    write_tar(copy / "shards" / "shard-000099.tar", sample)
    code, report = run_audit(copy, capsys=capsys)
    assert code == 1
    assert has(report, "unexpected_sample", "shard-000099.tar", rejected.clip_id)
    assert checks_found(report) == {"unexpected_sample"}
    assert "rejected clip" in report["problems"][0]["message"]


def test_missing_shard_file(clean, copy, capsys):
    shard = clean.kept[-1].shard
    (copy / "shards" / shard).unlink()
    code, report = run_audit(copy, capsys=capsys)
    assert code == 1 and has(report, "missing_shard", shard, None)
    assert checks_found(report) == {"missing_shard"}


def test_speaker_in_both_splits(clean, copy, capsys):
    val_clip = a_kept_clip(clean, "val")
    train_speaker = "hdtf_spk01"
    table = pq.read_table(copy / "manifests" / "clips.parquet")
    speakers = pc.if_else(pc.equal(table.column("clip_id"), val_clip.clip_id),
                          pa.scalar(train_speaker), table.column("speaker"))
    write_clips(copy, table.set_column(table.schema.get_field_index("speaker"), "speaker", speakers))
    code, report = run_audit(copy, capsys=capsys)
    assert code == 1
    assert has(report, "split_leak", val_clip.shard, val_clip.clip_id)
    assert checks_found(report) == {"split_leak"}
    assert train_speaker in report["problems"][0]["message"]


def test_edited_stats_counts(clean, copy, capsys):
    stats = json.loads((copy / "stats.json").read_text())
    stats["n_clips"] += 1
    (copy / "stats.json").write_text(json.dumps(stats))
    code, report = run_audit(copy, capsys=capsys)
    assert code == 1 and checks_found(report) == {"stats"}
    assert "n_clips" in report["problems"][0]["message"]


def test_edited_stats_values_found_deep(clean, copy, capsys):
    stats = json.loads((copy / "stats.json").read_text())
    stats["vector"]["mean"][68] += 2.0  # yaw
    (copy / "stats.json").write_text(json.dumps(stats))
    code, report = run_audit(copy, "--deep", capsys=capsys)
    assert code == 1 and checks_found(report) == {"stats"}
    assert "vector.mean" in report["problems"][0]["message"] and "dim 68" in report["problems"][0]["message"]


def test_nan_in_motion(clean, copy, capsys):
    clip = a_kept_clip(clean, "val")
    name = f"{clip.clip_id}.motion.npz"

    def poison(arrays):
        arrays["exp"][3, 5, 1] = np.nan

    replace_member(copy, clip.shard, name, edited_npz(member_bytes(copy, clip.shard, name), poison))
    code, report = run_audit(copy, "--deep", capsys=capsys)
    assert code == 1
    assert has(report, "non_finite", clip.shard, clip.clip_id)
    assert checks_found(report) == {"non_finite"}


def test_wrong_dtype_and_shape(clean, copy, capsys):
    first, second = [c for c in clean.kept if c.split == "train"][:2]
    name = f"{first.clip_id}.motion.npz"

    def widen(arrays):
        arrays["kp"] = arrays["kp"].astype(np.float64)

    replace_member(copy, first.shard, name, edited_npz(member_bytes(copy, first.shard, name), widen))
    name = f"{second.clip_id}.audio_feat.npy"
    feat = np.load(io.BytesIO(member_bytes(copy, second.shard, name)))
    buffer = io.BytesIO()
    np.save(buffer, feat[:-3])  # three frames short of the motion
    replace_member(copy, second.shard, name, buffer.getvalue())
    code, report = run_audit(copy, "--deep", capsys=capsys)
    assert code == 1
    assert has(report, "bad_dtype", first.shard, first.clip_id)
    assert has(report, "bad_shape", second.shard, second.clip_id)
    assert checks_found(report) == {"bad_dtype", "bad_shape"}


def test_unknown_schema_version_and_duplicate_clip_id(clean, copy, capsys):
    table = pq.read_table(copy / "manifests" / "clips.parquet")
    rejected = table.filter(pc.invert(table.column("kept"))).slice(0, 1)
    table = pa.concat_tables([table, rejected]).replace_schema_metadata({b"schema_version": b"99"})
    write_clips(copy, table)
    code, report = run_audit(copy, capsys=capsys)
    assert code == 1
    assert {"schema_version", "duplicate_clip_id"} <= checks_found(report) <= {
        "schema_version", "duplicate_clip_id", "video_rows"}
    assert any("'99'" in p["message"] for p in report["problems"])


# ---- report and re-thresholding ---------------------------------------------------------------


def test_html_report_is_self_contained(clean, tmp_path, capsys):
    path = tmp_path / "report.html"
    assert main([str(clean.root), "--html", str(path)]) == 0
    text = path.read_text()
    n_scores = sum(any(n in c.scores for c in clean.clips) for n in CLIPS.names if n.startswith("score_"))
    png = re.findall(r'<img [^>]*src="data:image/png;base64,', text)
    jpeg = re.findall(r'<img [^>]*src="data:image/jpeg;base64,', text)
    assert len(png) >= n_scores + 3  # histograms, duration, funnel, balance
    assert len(re.findall(r"<img ", text)) == len(png) + len(jpeg)  # every image is inline
    assert "http://" not in text and "https://" not in text
    assert not re.search(r'(src|href)="(?!data:)', text)
    for outcome in {c.outcome for c in clean.clips}:
        assert f"<h3>{outcome} (" in text
    reachable = [c for c in clean.clips if c.video_index != 5]
    assert len(jpeg) == sum(min(4, n) for n in _per_outcome(reachable).values())
    assert "source unreachable" in text


def _per_outcome(clips) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in clips:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    return counts


def test_rethreshold_counts_and_new_manifest(clean, tmp_path, capsys):
    rules = tmp_path / "t.yaml"
    rules.write_text("thresholds:\n  quality: {min: 3.5}\n  score_pose_range_deg: {max: 90}\n"
                     "hard: [faces]\n")
    new_manifest = tmp_path / "new_clips.parquet"
    code, report = run_audit(clean.root, "--rethreshold", str(rules), "--write-manifest",
                             str(new_manifest), capsys=capsys)
    assert code == 0
    dropped = {c.clip_id for c in clean.kept if c.scores["score_quality"] < 3.5}
    assert 0 < len(dropped) < len(clean.kept)
    head_motion = [c for c in clean.clips if c.outcome == "head_motion/pose_range"]
    totals = report["rethreshold"]["totals"]
    assert totals["clips_before"] == len(clean.kept)
    assert totals["clips_after"] == len(clean.kept) - len(dropped)
    assert totals["newly_dropped"] == len(dropped) and totals["newly_kept"] == 0
    would_pass = [c for c in head_motion if c.scores["score_quality"] >= 3.5]
    assert totals["not_featurised"] == len(would_pass)
    assert totals["below_threshold"] == len(dropped) + len(head_motion) - len(would_pass) + sum(
        c.outcome in ("cheap/too_short", "quality/low_quality", "sync/low_sync_conf") for c in clean.clips)
    assert totals["hard_rejection"] == sum(c.outcome.startswith("faces/") for c in clean.clips)
    assert totals["not_evaluated"] == sum(c.outcome == "decode/error" for c in clean.clips)
    per_dataset = {row["dataset"]: row for row in report["rethreshold"]["by_dataset"]}
    for dataset in {c.dataset for c in clean.clips}:
        assert per_dataset[dataset]["clips_after"] == sum(
            c.dataset == dataset and c.clip_id not in dropped for c in clean.kept)

    table = pq.read_table(new_manifest)
    assert table.schema.remove_metadata() == CLIPS
    assert table.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    assert {k for k, r in rows.items() if r["kept"]} == {c.clip_id for c in clean.kept} - dropped
    for clip_id in dropped:
        assert (rows[clip_id]["stage"], rows[clip_id]["reason"]) == ("rethreshold", "score_quality_below_min")
    for clip in head_motion:  # would pass, but no sample exists: must not be marked kept
        assert rows[clip.clip_id]["kept"] is False and rows[clip.clip_id]["stage"] == "head_motion"
    assert json.loads(next(iter(rows.values()))["thresholds"])["score_quality"] == {"min": 3.5}


def test_rethreshold_loosening_reports_unfeaturised_and_bad_files(clean, tmp_path, capsys):
    rules = tmp_path / "loose.yaml"
    rules.write_text("thresholds:\n  score_quality: {min: 2.0}\n  score_pose_range_deg: null\n")
    code, report = run_audit(clean.root, "--rethreshold", str(rules), capsys=capsys)
    totals = report["rethreshold"]["totals"]
    outcomes = [c.outcome for c in clean.clips]
    assert code == 0 and totals["clips_after"] == totals["clips_before"] == len(clean.kept)
    assert totals["not_featurised"] == outcomes.count("head_motion/pose_range")
    # Quality rejects now pass quality but never reached the sync stage; no-face clips have no
    # face size; the decode error has no score at all: none of them can be judged.
    assert totals["not_evaluated"] == (outcomes.count("quality/low_quality") + outcomes.count("faces/no_face")
                                       + outcomes.count("decode/error"))
    rules.write_text("thresholds:\n  sharpness: {min: 1}\n")
    assert main([str(clean.root), "--rethreshold", str(rules)]) == 2
    assert "unknown score 'sharpness'" in capsys.readouterr().err


def test_a_shard_holds_one_split(tmp_path, capsys):
    """Shards named for their split audit clean (deep: every sample's own split agrees); a validation
    shard renamed as a training one is reported clip by clip."""
    fixture = build_output(tmp_path / "out", split_shards=True)
    root = fixture.root
    names = sorted(p.name for p in (root / "shards").glob("*.tar"))
    assert "shard-000000-train.tar" in names and "shard-000000-val.tar" in names
    assert all(c.shard.split("-")[2].split(".")[0] == c.split for c in fixture.kept)
    code, report = run_audit(root, "--deep", capsys=capsys)
    assert code == 0 and report["problems"] == []
    val_shard = "shard-000000-val.tar"
    moved = [c.clip_id for c in fixture.kept if c.shard == val_shard]
    (root / "shards" / val_shard).rename(root / "shards" / "shard-000000-train-05.tar")
    table = pq.read_table(root / "manifests" / "clips.parquet")
    shards = pc.if_else(pc.equal(table.column("shard"), val_shard), pa.scalar("shard-000000-train-05.tar"),
                        table.column("shard"))
    write_clips(root, table.set_column(table.schema.get_field_index("shard"), "shard", shards))
    code, report = run_audit(root, capsys=capsys)
    assert code == 1 and checks_found(report) == {"shard_split"}
    assert sorted(p["key"] for p in report["problems"]) == sorted(moved)
    assert all(p["shard"] == "shard-000000-train-05.tar" for p in report["problems"])


def test_retryable_items_are_listed_apart_from_rejections(copy, capsys):
    """Items the job left for a rerun (``OUT/incomplete/``) are named in the summary, not counted
    as rejections; the checks still pass (the done chunks are consistent)."""
    item = {"step": "model", "source": "/videos/x.mp4", "start_s": 0.0, "end_s": 8.0, "kind": "out_of_memory",
            "error": "model: TransientError: out_of_memory: CUDA out of memory", "attempts": 3}
    (copy / "incomplete").mkdir()
    (copy / "incomplete" / "chunk-000007.json").write_text(json.dumps({"chunk": 7, "items": [item]}))
    code, report = run_audit(copy, capsys=capsys)
    assert code == 0
    waiting = report["summary"]["retryable"]
    assert waiting["chunks"] == [7] and waiting["kinds"] == {"out_of_memory": 1}
    assert waiting["items"][0]["source"] == "/videos/x.mp4"
    rejected = report["summary"]["totals"]["clips_rejected"]
    assert main([str(copy), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "Retryable, not rejected" in text and "out_of_memory 1" in text and "/videos/x.mp4" in text
    assert rejected == run_audit(copy, capsys=capsys)[1]["summary"]["totals"]["clips_rejected"]
