"""Finished clips spilled to the output's staging folder come back whole, and their folder goes
once the chunk is written."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.clip import Clip
from pipeline.outdir import OutputDir
from pipeline.spill import SPILL_DIR, ClipSpill, spill_name


def finished_clip(seed: int) -> Clip:
    rng = np.random.default_rng(seed)
    clip = Clip(source=f"/v/{seed}.mp4", video_id=f"vid{seed}", chunk=3, start_s=1.0, end_s=3.0)
    clip.audio = rng.standard_normal(50 * 640).astype(np.float32)
    clip.audio_feat = rng.standard_normal((50, 768)).astype(np.float32)
    clip.motion = {"exp": rng.standard_normal((50, 63)).astype(np.float32)}
    clip.scores = {"sync_conf": 5.0}
    return clip


def test_spilled_clips_come_back_whole_and_go_with_their_chunk(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    (tmp_path / "out" / SPILL_DIR / "chunk-000009").mkdir(parents=True)  # a crashed run's leftovers
    held = {}  # stands in for the object store: fetch pops, so nothing keeps the record
    spill = ClipSpill(out, held.pop)
    assert not (tmp_path / "out" / SPILL_DIR).exists()
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
