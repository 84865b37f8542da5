"""Finished clips spilled to the output's staging folder come back whole, their chunk's journal
(plans, final clips) is taken back by the next run, and the folder goes once the chunk is written."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.clip import Clip
from pipeline.outdir import OutputDir
from pipeline.spill import SPILL_DIR, ClipSpill, final_name, spill_name


def finished_clip(seed: int, chunk: int = 3) -> Clip:
    rng = np.random.default_rng(seed)
    clip = Clip(source=f"/v/{seed}.mp4", video_id=f"vid{seed}", chunk=chunk, start_s=1.0, end_s=3.0)
    clip.audio = rng.standard_normal(50 * 640).astype(np.float32)
    clip.audio_feat = rng.standard_normal((50, 768)).astype(np.float32)
    clip.motion = {"exp": rng.standard_normal((50, 63)).astype(np.float32)}
    clip.scores = {"sync_conf": 5.0}
    return clip


def test_spilled_clips_come_back_whole_and_go_with_their_chunk(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    (tmp_path / "out" / SPILL_DIR / "chunk-000009").mkdir(parents=True)  # a chunk done since
    held = {}  # stands in for the object store: fetch pops, so nothing keeps the record
    spill = ClipSpill(out, held.pop, keep_chunks=[3])
    assert not (tmp_path / "out" / SPILL_DIR / "chunk-000009").exists()
    clips = [finished_clip(i) for i in range(3)]
    pending = []
    for clip in clips:
        held[clip.clip_id] = clip
        pending.append(spill.put(clip.summary(), clip.clip_id))
    for clip, future in zip(clips, pending):
        back = spill.get(future)
        assert (tmp_path / "out" / spill_name(3, clip.clip_id)).is_file()
        np.testing.assert_array_equal(back.audio_feat, clip.audio_feat)
        np.testing.assert_array_equal(back.motion["exp"], clip.motion["exp"])
        assert back.scores == clip.scores and back.clip_id == clip.clip_id
    assert not held
    spill.drop_chunk(3)
    assert not (tmp_path / "out" / SPILL_DIR / "chunk-000003").exists()
    spill.close()
    assert not (tmp_path / "out" / SPILL_DIR).exists()


def test_an_unfinished_chunks_journal_is_taken_back_by_the_next_run(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    held = {}
    spill = ClipSpill(out, held.pop, keep_chunks=[3])
    video = Clip(source="/v/0.mp4", video_id="vid0", chunk=3)
    kept, rejected, lost = finished_clip(0), finished_clip(0), finished_clip(0)
    rejected.start_s, lost.start_s = 3.0, 5.0
    rejected.reject("sync", "offset")
    candidates = [kept.summary(), rejected.summary(), lost.summary()]
    spill.put_plan(video, candidates)
    held[kept.clip_id], held[lost.clip_id] = kept, lost
    spill.put(kept.summary(), kept.clip_id)
    spill.put_final(rejected.summary())
    spill.put(lost.summary(), lost.clip_id).result()
    spill.forget(3, lost.clip_id)  # its record was lost: no longer final
    (tmp_path / "out" / final_name(3, "half-written")).with_suffix(".pkl.tmp").write_bytes(b"\x80")
    spill.close()  # a run that ends with chunk 3 unfinished keeps its folder

    again = ClipSpill(out, held.pop, keep_chunks=[3])
    journal = again.restored(3)
    assert list(journal.plans) == ["vid0"]
    assert [c.clip_id for c in journal.plans["vid0"][1]] == [c.clip_id for c in candidates]
    assert sorted(journal.finals) == sorted([kept.clip_id, rejected.clip_id])
    assert journal.finals[rejected.clip_id].rejection.reason == "offset"
    back = again.get(again.held(3, kept.clip_id))
    np.testing.assert_array_equal(back.audio, kept.audio)
    assert len(again.restored(4)) == 0
    again.close()
    assert ClipSpill(out, held.pop, keep_chunks=[]).restored(3).finals == {}  # chunk 3 done since


def test_a_remote_outputs_journal_outlives_the_run(tmp_path: Path, monkeypatch):
    """A remote output stages in a new temporary folder each run; its journal is in a local folder
    named after the output, so the next run over the same URI finds it."""
    import pyarrow.fs as pafs

    monkeypatch.setenv("TH_JOURNAL_DIR", str(tmp_path / "journals"))
    bucket = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    (tmp_path / "bucket").mkdir()
    first = OutputDir("out", filesystem=bucket)
    held = {}
    spill = ClipSpill(first, held.pop, keep_chunks=[3])
    clip = finished_clip(5)
    held[clip.clip_id] = clip
    spill.put(clip.summary(), clip.clip_id)
    spill.close()
    first.close()
    assert not first.staging.exists()

    second = OutputDir("out", filesystem=bucket)
    assert second.journal_root == first.journal_root and second.staging != first.staging
    again = ClipSpill(second, held.pop, keep_chunks=[3])
    assert list(again.restored(3).finals) == [clip.clip_id]
    assert len(ClipSpill(OutputDir("other", filesystem=bucket), held.pop).restored(3)) == 0
    again.drop_chunk(3)
    again.close()
    assert not second.journal_root.exists()
