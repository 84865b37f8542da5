"""The thresholds cell of the clip manifest: what the job records and what re-thresholding reads."""
import json

from manifests import thresholds
from manifests.thresholds import parse_thresholds, record

FILTERS = {
    "duration": {"mode": "drop", "min_s": 3.0, "max_s": 10.0},
    "quality": {"mode": "drop", "metric": "piqe", "threshold": 60.0},
    "sync": {"mode": "score", "min_conf": 4.0, "max_abs_offset": 3},
}


def test_the_record_carries_each_threshold_s_meaning_and_the_bounds_in_force():
    cell = record(FILTERS, quality_lower_better=True)
    assert cell["quality"]["lower_better"] is True and "lower_better" not in FILTERS["quality"]
    assert cell["meaning"] == {
        "duration.min_s": {"score": "score_duration_s", "bound": "min"},
        "duration.max_s": {"score": "score_duration_s", "bound": "max"},
        "quality.threshold": {"score": "score_quality", "bound": "max"},
        "sync.min_conf": {"score": "score_sync_conf", "bound": "min"},
        "sync.max_abs_offset": {"score": "score_sync_offset", "bound": "abs"},
    }
    in_force = {"score_duration_s": {"min": 3.0, "max": 10.0}, "score_quality": {"max": 60.0}}
    assert cell["in_force"] == in_force  # sync only scores
    assert parse_thresholds(json.dumps(cell)) == in_force
    # the direction the scorer reported is what counts, whatever the metric's name
    higher = record({**FILTERS, "quality": {**FILTERS["quality"], "metric": "my_metric"}}, False)
    assert parse_thresholds(json.dumps(higher))["score_quality"] == {"min": 60.0}


def test_bounds_in_force_are_read_as_recorded():
    """A recorded cell is read from ``in_force`` alone: the settings beside it are not re-derived."""
    cell = record(FILTERS, quality_lower_better=True)
    cell["in_force"]["score_quality"] = {"max": 45.0}
    assert parse_thresholds(json.dumps(cell))["score_quality"] == {"max": 45.0}


def test_older_cells_fall_back_to_a_table_of_known_metrics():
    """Manifests from before the record hold only the filters settings."""
    assert parse_thresholds(json.dumps(FILTERS))["score_quality"] == {"max": 60.0}  # piqe: lower is better
    qalign = {**FILTERS, "quality": {"mode": "drop", "metric": "qalign", "threshold": 3.0}}
    assert parse_thresholds(json.dumps(qalign))["score_quality"] == {"min": 3.0}
    assert parse_thresholds(json.dumps({"filters": qalign}))["score_duration_s"] == {"min": 3.0, "max": 10.0}
    assert parse_thresholds(json.dumps({"score_quality": {"min": 2.0}})) == {"score_quality": {"min": 2.0}}
    assert parse_thresholds("not json") == {} and parse_thresholds(None) == {}
    assert "piqe" in thresholds.LOWER_BETTER_METRICS and "qalign" not in thresholds.LOWER_BETTER_METRICS


def test_the_table_agrees_with_pyiqa():
    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    no_reference = set(pyiqa.list_models(metric_mode="NR"))
    lower = {name for name, conf in DEFAULT_CONFIGS.items() if conf.get("lower_better") and name in no_reference}
    assert thresholds.LOWER_BETTER_METRICS == lower - {"fid", "fid_dinov2", "sfid"}  # the FIDs score sets
