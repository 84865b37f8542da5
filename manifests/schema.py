"""Parquet manifest schemas: one row per input video and one per candidate clip.

Every candidate clip keeps a row whether it was kept or rejected, with the stage and reason of a
rejection, every score computed so far (``score_*`` columns, null when the stage never ran), the
thresholds in force and the model ids and weight hashes. Re-thresholding therefore never needs the
models to run again. ``SCHEMA_VERSION`` is stored in the Parquet metadata and bumped on any change.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: split_group, crop_backend, identity_backend, face_embedding

VIDEO_STATUS = ("ok", "failed")

VIDEOS = pa.schema([
    ("video_id", pa.string()),          # uuid5 of the source URI
    ("source", pa.string()),            # path or URI as given
    ("dataset", pa.string()),
    ("language", pa.string()),
    ("speaker", pa.string()),
    ("status", pa.string()),            # "ok" | "failed"
    ("stage", pa.string()),             # stage that failed, null when ok
    ("error", pa.string()),             # readable reason, null when ok
    ("duration_s", pa.float64()),
    ("fps", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("rotation", pa.int32()),
    ("has_audio", pa.bool_()),
    ("n_clips", pa.int32()),
    ("n_kept", pa.int32()),
    ("chunk", pa.int32()),              # work unit (and shard index) the video belongs to
])

# Scores a clip can carry. Null means the stage did not run for this clip.
SCORE_COLUMNS = (
    "score_duration_s",
    "score_audio_rms_db",
    "score_face_count",
    "score_face_size",
    "score_quality",
    "score_sync_conf",
    "score_sync_dist",
    "score_sync_offset",
    "score_audio_shift_frames",
    "score_pose_range_deg",
    "score_pose_speed_deg_s",
    "score_t_range",
    "score_t_speed",
)

CLIPS = pa.schema(
    [
        ("clip_id", pa.string()),        # uuid5 of (source, start, end)
        ("video_id", pa.string()),
        ("source", pa.string()),
        ("dataset", pa.string()),
        ("language", pa.string()),
        ("speaker", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("n_frames", pa.int32()),
        ("kept", pa.bool_()),
        ("stage", pa.string()),          # rejecting stage, null when kept
        ("reason", pa.string()),         # rejection reason, null when kept
        ("error", pa.string()),          # details of a rejection (the error text of a failure), else null
        ("split", pa.string()),          # "train" | "val", by split_group
        ("split_group", pa.string()),    # speaker:<name> | face:<video id> (identity group) | video:<id>
        ("crop_backend", pa.string()),   # landmarks that placed the LivePortrait crop, or detector_box
        ("identity_backend", pa.string()),  # model of face_embedding, e.g. dlib_resnet128
        ("face_embedding", pa.list_(pa.float32())),  # the clip's face identity embedding
    ]
    + [(name, pa.float64()) for name in SCORE_COLUMNS]
    + [
        ("thresholds", pa.string()),     # JSON of the thresholds in force
        ("model_ids", pa.string()),      # JSON {model: id}
        ("weight_hashes", pa.string()),  # JSON {model: sha256 or "random"}
        ("random_weights", pa.bool_()),  # true when any model ran with random weights
        ("shard", pa.string()),          # shard file name when kept
        ("key", pa.string()),            # sample key in the shard when kept
        ("sha256", pa.string()),         # JSON {member: sha256} of the sample's members when kept
        ("chunk", pa.int32()),
    ]
)
