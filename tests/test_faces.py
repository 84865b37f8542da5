"""Face tracking, rejection reasons and crops: the Haar backend on real clips, SCRFD decoding."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.face_detectors import (
    ScrfdDetector,
    decode_scrfd,
    distance2bbox,
    make_detector,
    nms,
    scrfd_anchor_centres,
)
from pipeline.faces import FaceTracker, TrackResult, crop_liveportrait, crop_syncnet, liveportrait_box

# (file, decoded width, height, frames): small enough to be quick, faces still >= 50 px.
CLIPS = {
    "lp_d20.mp4": (240, 240, 45),
    "lp_d14.mp4": (256, 256, 45),
    "lp_s13.mp4": (480, 720, 30),
    "carphone.mp4": (176, 144, 120),  # its head tilts from frame ~57 on: the rotated retries find it
}


@pytest.fixture(scope="module", autouse=True)
def one_cv2_thread():
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(previous)


def decode(path: Path, width: int, height: int, n: int) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), width=width, height=height)
    return reader.get_batch(list(range(min(n, len(reader))))).asnumpy()


@pytest.fixture(scope="module")
def tracker() -> FaceTracker:
    return FaceTracker(backend="haar", min_face=40)


@pytest.fixture(scope="module")
def d20(media) -> np.ndarray:
    return decode(media / "lp_d20.mp4", *CLIPS["lp_d20.mp4"])


@pytest.fixture(scope="module")
def d20_track(tracker, d20) -> TrackResult:
    return tracker.track(d20)


# ---------------------------------------------------------------------------------------------
# Real clips and the rejection reasons

@pytest.mark.parametrize("name", [n for n in CLIPS if n != "lp_d20.mp4"])
def test_haar_finds_exactly_one_face_track_in_real_clips(media, tracker, name):
    frames = decode(media / name, *CLIPS[name])
    result = tracker.track(frames)
    assert result.ok and result.reason is None, (name, result.reason)
    assert result.n_faces_max == 1
    assert result.detected_fraction >= 0.8
    assert result.boxes.shape == (len(frames), 4) and np.isfinite(result.boxes).all()
    centre_x = (result.boxes[:, 0] + result.boxes[:, 2]) / 2
    centre_y = (result.boxes[:, 1] + result.boxes[:, 3]) / 2
    height, width = frames.shape[1:3]
    assert (0 < centre_x).all() and (centre_x < width).all() and (0 < centre_y).all() and (centre_y < height).all()


def test_real_clip_in_chunks_equals_whole(tracker, d20, d20_track):
    assert d20_track.ok and d20_track.n_faces_max == 1 and d20_track.face_size > 80
    chunked = tracker.track(iter([d20[:16], d20[16:17], d20[17:]]))  # sampling continues across chunks
    np.testing.assert_array_equal(chunked.boxes, d20_track.boxes)
    assert (chunked.ok, chunked.face_size, chunked.n_frames) == (True, d20_track.face_size, len(d20))


def test_noise_and_blank_frames_have_no_face(tracker):
    noise = np.random.default_rng(0).integers(0, 256, (24, 160, 160, 3), dtype=np.uint8)
    for frames in (noise, np.full_like(noise, 128)):
        result = tracker.track(frames)
        assert (result.ok, result.reason, result.n_faces_max, result.face_size) == (False, "no_face", 0, None)
        assert np.isnan(result.boxes).all()
        with pytest.raises(ValueError, match="no face track"):
            crop_liveportrait(frames[:2], result)


def test_two_faces_side_by_side_are_multiple_faces(tracker, d20):
    result = tracker.track(np.concatenate([d20[:24], d20[:24, :, ::-1]], axis=2))
    assert (result.ok, result.reason, result.n_faces_max) == (False, "multiple_faces", 2)


def test_a_small_second_face_does_not_count(tracker, d20):
    frames = d20.copy()
    small = np.stack([cv2.resize(f, (80, 80), interpolation=cv2.INTER_AREA) for f in d20])
    frames[:, 160:, 160:] = small  # the same face at a ninth of the area in a corner
    result = tracker.track(frames)
    assert result.reason is None and result.n_faces_max == 1


def test_tiny_face_is_too_small(d20):
    small = np.stack([cv2.resize(f, (80, 80), interpolation=cv2.INTER_AREA) for f in d20])
    frames = np.full_like(d20, 128)
    frames[:, 80:160, 80:160] = small
    result = FaceTracker(min_face=64).track(frames)
    assert (result.ok, result.reason) == (False, "face_too_small")
    assert 20 < result.face_size < 64


def test_face_removed_mid_clip_is_track_lost(tracker, d20):
    frames = np.concatenate([d20, d20])
    frames[20:70] = 128  # 2 s without a face
    result = tracker.track(frames)
    assert (result.ok, result.reason) == (False, "track_lost")
    assert result.longest_gap >= 45 and result.detected_fraction < 0.7
    assert np.isfinite(result.boxes).all()  # still interpolated through the gap


def test_scale_hint_finds_what_full_scans_find(media, d20):
    """Between full scans the cascade skips faces under half the tracked one: on real clips, two
    faces, a small second face and a face that leaves, the track equals scanning every size."""
    small = np.stack([cv2.resize(f, (80, 80), interpolation=cv2.INTER_AREA) for f in d20])
    corner = d20.copy()
    corner[:, 160:, 160:] = small
    leaves = np.concatenate([d20, d20])
    leaves[20:70] = 128
    cases = {"two faces": np.concatenate([d20[:24], d20[:24, :, ::-1]], axis=2), "small second face": corner,
             "face leaves": leaves, **{name: decode(media / name, *CLIPS[name]) for name in CLIPS}}
    hinted, full = FaceTracker(min_face=40), FaceTracker(min_face=40, full_scan_every=1)
    hints: list[float] = []
    detect = hinted.detector.detect
    hinted.detector.detect = lambda frame, min_side=0.0: hints.append(min_side) or detect(frame, min_side)
    for name, frames in cases.items():
        a, b = hinted.track(frames), full.track(frames)
        assert (a.reason, a.n_faces_max, a.face_size) == (b.reason, b.n_faces_max, b.face_size), name
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, err_msg=name)
    # most samples skipped the cascade's smallest scales (20 px windows at these frame sizes)
    assert np.mean(np.asarray(hints) > hinted.detector.min_size) > 0.5


def test_bad_input_is_refused(tracker):
    with pytest.raises(ValueError, match="uint8"):
        tracker.track(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="no frames"):
        tracker.track(iter([]))
    with pytest.raises(ValueError, match="unknown face backend"):
        FaceTracker(backend="dlib")


# ---------------------------------------------------------------------------------------------
# Crops

def constant_track(boxes: list[list[float]], size=(400, 400)) -> TrackResult:
    from pipeline.faces import clip_face

    boxes_array = np.asarray(boxes, np.float32)
    return TrackResult(ok=True, reason=None, boxes=boxes_array, n_faces_max=1, face_size=100.0,
                       n_frames=len(boxes), frame_size=size, clip_face=clip_face(boxes_array))


def test_liveportrait_box_geometry_by_hand():
    # One face box (100, 100)-(200, 200): centre (150, 150), size 100 -> side 2.2 * 100 = 220,
    # centre moved up by 0.1 * 220 = 22 -> (150, 128) -> box (40, 18)-(260, 238).
    np.testing.assert_allclose(liveportrait_box(constant_track([[100, 100, 200, 200]])), [40, 18, 260, 238],
                               atol=1e-4)
    # Two frames, the per-frame boxes averaged: centres (150, 150), (180, 160); sizes 100, 120.
    # Mean centre (165, 155), mean size 110 -> side 242, centre y 155 - 24.2 = 130.8.
    np.testing.assert_allclose(liveportrait_box(constant_track([[100, 100, 200, 200], [120, 100, 240, 220]])),
                               [44, 9.8, 286, 251.8], atol=1e-4)


def test_liveportrait_crop_places_the_box_and_pads_black():
    frame = np.full((400, 400, 3), 200, np.uint8)
    frame[126:131, 148:153] = (255, 0, 0)  # a red dot at the box centre (150, 128)
    track = constant_track([[100, 100, 200, 200]])
    crop = crop_liveportrait(frame[None], track)
    assert crop.shape == (1, 256, 256, 3) and crop.dtype == np.uint8
    assert tuple(crop[0, 128, 128]) == (255, 0, 0)
    assert tuple(crop[0, 20, 20]) == (200, 200, 200)
    # A box hanging over the top-left corner: black outside the frame.
    corner = constant_track([[-20, -20, 80, 80]])
    x1, y1, x2, y2 = liveportrait_box(corner)
    crop = crop_liveportrait(frame[None], corner)
    left_edge, top_edge = round(-x1 / (x2 - x1) * 256), round(-y1 / (y2 - y1) * 256)  # 93, 119
    assert (crop[0, :, : left_edge - 2] == 0).all() and (crop[0, : top_edge - 2] == 0).all()
    assert (crop[0, top_edge + 2:, left_edge + 2:] == 200).all()


def test_syncnet_crop_geometry_by_hand():
    # Box (100, 100)-(200, 200): bs = 50, crop scale 0.4 -> side 140, centre (150, 150 + 20).
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[168:173, 148:153] = (0, 255, 0)
    frame[100:102, :] = (0, 0, 255)  # the crop's top edge (y = 100)
    crop = crop_syncnet(frame[None], constant_track([[100, 100, 200, 200]]))
    assert crop.shape == (1, 224, 224, 3) and crop.dtype == np.uint8
    assert tuple(crop[0, 112, 112]) == (0, 255, 0)
    assert crop[0, 0:2, 100, 2].min() > 100 and crop[0, 6:, 100, 2].max() == 0
    # Outside the frame: syncnet_python's grey 110.
    crop = crop_syncnet(frame[None], constant_track([[-60, 300, 40, 400]]))
    assert tuple(crop[0, 220, 2]) == (110, 110, 110)


def test_crops_of_a_real_clip_whole_and_chunked(d20, d20_track):
    lp = crop_liveportrait(d20, d20_track)
    sync = crop_syncnet(d20, d20_track)
    assert lp.shape == (len(d20), 256, 256, 3) and lp.dtype == np.uint8
    assert sync.shape == (len(d20), 224, 224, 3) and sync.dtype == np.uint8
    assert lp.std() > 20 and sync.std() > 20
    parts_lp, parts_sync = [], []
    for start in range(0, len(d20), 20):
        chunk = d20[start:start + 20]
        part = d20_track.slice(start, start + len(chunk))
        parts_lp.append(crop_liveportrait(chunk, part))
        parts_sync.append(crop_syncnet(chunk, part))
    np.testing.assert_array_equal(np.concatenate(parts_lp), lp)
    np.testing.assert_array_equal(np.concatenate(parts_sync), sync)
    with pytest.raises(ValueError, match="slice"):
        crop_syncnet(d20[:5], d20_track)


def test_face_stage_decodes_once_or_twice_with_the_same_crops(media):
    """A clip that fits ``decode.reuse_frames_mb`` is decoded once; one that does not is streamed
    twice (memory bound): the same scores and crops either way."""
    from pipeline.clip import Clip
    from configs import load_config, to_dict
    from pipeline.inputs import video_id
    from pipeline.stages.faces import FaceStage
    from pipeline.stages.probe import ProbeStage

    cfg = to_dict(load_config("pipeline", ["decode.max_side=256", "decode.chunk_frames=16",
                                           "filters.faces.min_face_px=32"]))
    source = str(media / "lp_d20.mp4")
    (video,) = ProbeStage(cfg)([Clip(source=source, video_id=video_id(source), chunk=0)])
    results = {}
    for budget in (512, 0):
        cfg["decode"]["reuse_frames_mb"] = budget
        stage = FaceStage(cfg)
        clip = video.span_clip(1.0, 3.0)
        assert (stage.decoded_once(clip) is not None) == (budget > 0)
        (clip,) = stage([clip])
        assert clip.kept, clip.rejection
        results[budget] = clip
    once, twice = results[512], results[0]
    assert once.lp_crops.shape == (50, 256, 256, 3) and once.sync_crops.shape == (50, 224, 224, 3)
    np.testing.assert_array_equal(once.lp_crops, twice.lp_crops)
    np.testing.assert_array_equal(once.sync_crops, twice.sync_crops)
    assert once.scores == twice.scores and once.scores["face_count"] == 1.0
    # The crop came from dlib's landmarks; the clip carries its face's identity embedding.
    assert once.crop_backend == twice.crop_backend == "dlib68"
    assert once.identity_backend == "dlib_resnet128" and once.face_embedding.shape == (128,)
    np.testing.assert_array_equal(once.face_embedding, twice.face_embedding)
    assert stage.describe()["model_id"] == "dlib68+dlib_resnet128"


# ---------------------------------------------------------------------------------------------
# SCRFD (InsightFace det_10g) decoding

def test_scrfd_anchor_centres_and_distance2bbox():
    centres = scrfd_anchor_centres(2, 3, stride=8)
    # Row by row, each location twice, no half-cell offset.
    np.testing.assert_array_equal(centres[:6], [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0]])
    np.testing.assert_array_equal(centres[6:8], [[0, 8], [0, 8]])
    boxes = distance2bbox(np.asarray([[16.0, 8.0]]), np.asarray([[1.0, 2.0, 3.0, 4.0]]))
    np.testing.assert_array_equal(boxes, [[15, 6, 19, 12]])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    kept = nms(boxes, np.asarray([0.8, 0.9, 0.7], np.float32), iou_threshold=0.4)
    np.testing.assert_array_equal(kept, [1, 2])


def scrfd_outputs(input_size: int) -> list[np.ndarray]:
    """Head outputs with one face at stride 8, cell (x 3, y 4): box (14, 20)-(34, 44) in input pixels,
    a weaker overlapping duplicate on the second anchor, and one score under the threshold."""
    scores, distances, keypoints = [], [], []
    for stride in (8, 16, 32):
        n = (input_size // stride) ** 2 * 2
        scores.append(np.zeros((n, 1), np.float32))
        distances.append(np.ones((n, 4), np.float32))
        keypoints.append(np.zeros((n, 10), np.float32))
    anchor = (4 * (input_size // 8) + 3) * 2  # centre (24, 32)
    scores[0][anchor] = 0.9
    distances[0][anchor] = np.asarray([10, 12, 10, 12]) / 8
    scores[0][anchor + 1] = 0.8
    distances[0][anchor + 1] = np.asarray([11, 12, 9, 12]) / 8
    scores[1][5] = 0.3
    return scores + distances + keypoints


def test_decode_scrfd_on_constructed_outputs():
    dets = decode_scrfd(scrfd_outputs(64), input_size=64, score_threshold=0.5, nms_threshold=0.4)
    np.testing.assert_allclose(dets, [[14, 20, 34, 44, 0.9]], atol=1e-5)
    with_batch_axis = [o[None] for o in scrfd_outputs(64)]
    np.testing.assert_allclose(decode_scrfd(with_batch_axis, 64, 0.5, 0.4), dets)
    with pytest.raises(ValueError, match="anchors"):
        decode_scrfd(scrfd_outputs(64), input_size=128, score_threshold=0.5, nms_threshold=0.4)


def test_scrfd_detector_runs_an_onnx_graph_through_onnxruntime(tmp_path):
    """A tiny ONNX graph with det_10g's input and 9 outputs runs through the real detector path."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    outputs = scrfd_outputs(64)
    names = [f"out{i}" for i in range(9)]
    # Each output = constant + 0 * mean(input), so the graph really consumes the image.
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    for name, value in zip(names, outputs):
        inits.append(numpy_helper.from_array(value, f"{name}_const"))
        nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
    graph = helper.make_graph(
        nodes, "tiny_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in zip(names, outputs)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "det_tiny.onnx"
    onnx.save(model, str(path))

    detector = ScrfdDetector(path, input_size=64)
    frame = np.zeros((96, 128, 3), np.uint8)  # wider than tall: scaled by 0.5 into the 64 px input
    blob, scale = detector.letterbox(frame)
    assert blob.shape == (1, 3, 64, 64) and scale == 0.5
    assert blob[0, 0, 0, 0] == pytest.approx(-127.5 / 128) and blob[0, 0, 63, 0] == pytest.approx(-127.5 / 128)
    np.testing.assert_allclose(detector.detect(frame), [[28, 40, 68, 88, 0.9]], atol=1e-4)
    tracker = FaceTracker(backend="insightface", weights=path, detector_options={"input_size": 64},
                          min_face=10, detect_every=1)
    result = tracker.track(np.zeros((4, 96, 128, 3), np.uint8))
    assert result.ok and result.face_size == pytest.approx(48)


def test_insightface_backend_without_the_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="det_10g|insightface"):
        make_detector("insightface", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="SCRFD model not found"):
        make_detector("insightface", weights=tmp_path / "det_10g.onnx")
