"""Landmark backends and the landmark crop of the face tracker: 2d106det on a small ONNX graph,
dlib's 68 points on every real clip."""
from __future__ import annotations

import numpy as np
import pytest

from models.face_landmarks import DlibLandmarks, InsightFaceLandmarks, make_landmarks
from pipeline.faces import DETECTOR_BOX, FaceTracker, crop_liveportrait, landmark_clip_box, liveportrait_box
from tests.test_faces import CLIPS, decode


def tiny_2d106det(path, points: np.ndarray) -> None:
    """An ONNX graph with 2d106det's input (1, 3, 192, 192) and output (1, 212): constant landmarks
    plus 0 x the image's mean, so the graph really consumes its input."""
    from onnx import TensorProto, helper, numpy_helper, save

    nodes = [helper.make_node("ReduceMean", ["data"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Add", ["points", "nothing"], ["fc1"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
             numpy_helper.from_array(points.reshape(1, 212).astype(np.float32), "points")]
    graph = helper.make_graph(nodes, "tiny_2d106det",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))


def test_insightface_106_preprocessing_and_mapping_back_by_hand(tmp_path):
    points = np.zeros((106, 2), np.float32)
    points[1] = (1.0, 1.0)
    points[2] = (-1.0, 0.5)
    tiny_2d106det(tmp_path / "2d106det.onnx", points)
    backend = make_landmarks("insightface", weights=tmp_path / "2d106det.onnx")
    assert isinstance(backend, InsightFaceLandmarks) and backend.n_points == 106
    frame = np.full((300, 400, 3), 50, np.uint8)
    frame[150, 150] = (255, 0, 0)   # the box centre
    box = np.asarray([100.0, 110.0, 200.0, 190.0])  # longer side 100 -> a 150 px square -> s = 1.28
    blob = backend.blob(frame, backend.input_matrix(box))
    assert blob.shape == (1, 3, 192, 192) and blob.dtype == np.float32
    np.testing.assert_array_equal(blob[0, :, 96, 96], [255, 0, 0])   # RGB, mean 0, std 1
    assert blob[0, 0, 10, 10] == 50.0
    # Output in [-1, 1] -> (p + 1) * 96 input pixels -> back to the frame: centre + (p * 96) / 1.28.
    found = backend.landmarks(frame, box)
    assert found.shape == (106, 2) and found.dtype == np.float32
    np.testing.assert_allclose(found[0], [150, 150], atol=1e-4)
    np.testing.assert_allclose(found[1], [225, 225], atol=1e-4)
    np.testing.assert_allclose(found[2], [75, 187.5], atol=1e-4)


def test_landmark_backends_refuse_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="2d106det"):
        make_landmarks("insightface", weights=tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="insightface_2d106det|2d106det"):
        make_landmarks("insightface", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown landmark backend"):
        make_landmarks("mediapipe")
    assert make_landmarks("none") is None
    with pytest.raises(ValueError, match="face box"):
        DlibLandmarks().landmarks(np.zeros((10, 10, 3), np.uint8), [5, 5, 5, 9])


def test_landmark_clip_box_interpolates_then_averages():
    # Boxes at frames 1 and 3 of 5 frames: frame 0 holds the first, 2 is halfway, 4 holds the last.
    box = landmark_clip_box([1, 3], [np.asarray([0, 0, 10, 10.0]), np.asarray([4, 0, 14, 10.0])], 5)
    np.testing.assert_allclose(box, [(0 + 0 + 2 + 4 + 4) / 5, 0, 10 + 2, 10])


@pytest.fixture(scope="module")
def dlib_tracker() -> FaceTracker:
    return FaceTracker(backend="haar", min_face=40, landmarks="dlib")


@pytest.mark.parametrize("name", list(CLIPS))
def test_dlib_landmarks_crop_every_real_clip(media, dlib_tracker, name):
    frames = decode(media / name, *CLIPS[name])
    track = dlib_tracker.track(frames)
    assert track.ok, (name, track.reason)
    assert track.crop_backend == "dlib68" and track.landmarked_frames >= len(frames) // 6 - 1
    x1, y1, x2, y2 = liveportrait_box(track)
    assert x2 - x1 == pytest.approx(y2 - y1, rel=1e-5)
    # The landmark box holds the tracked face, and is of the size LivePortrait's rule gives it:
    # 2.2 x a landmark extent close to the detector box's side.
    face = np.nanmedian(track.boxes, axis=0)
    assert x1 < face[0] and y1 < face[1] and x2 > face[2] and y2 > face[3], (name, (x1, y1, x2, y2), face)
    side_ratio = (x2 - x1) / (2.2 * track.face_size)
    assert 0.7 < side_ratio < 1.4, (name, side_ratio)
    crops = crop_liveportrait(frames[:4], track)
    assert crops.shape == (4, 256, 256, 3) and crops.std() > 20


def test_without_landmarks_the_detector_box_crops():
    tracker = FaceTracker(backend="haar", landmarks="none")
    assert tracker.landmarker is None
    with pytest.raises(ValueError, match="landmark_every"):
        FaceTracker(landmark_every=0)


def test_no_landmarked_sample_falls_back_to_the_detector_box(media):
    frames = decode(media / "lp_d20.mp4", *CLIPS["lp_d20.mp4"])[:6]
    # Two samples (frames 0 and 3); landmarks only on every 4th sample: sample 0 has them.
    track = FaceTracker(min_face=40, landmark_every=4, min_track_share=0.2).track(frames)
    assert track.crop_backend == "dlib68" and track.landmarked_frames == 1
    none = FaceTracker(min_face=40, landmarks="none").track(frames)
    assert none.crop_backend == DETECTOR_BOX and not np.isfinite(none.crop_box).any()
    np.testing.assert_allclose(liveportrait_box(none)[2] - liveportrait_box(none)[0], 2.2 * np.mean(
        np.maximum(none.boxes[:, 2] - none.boxes[:, 0], none.boxes[:, 3] - none.boxes[:, 1])), rtol=1e-5)
