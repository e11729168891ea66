"""Progress documents, overall fraction, queue routing, settings invariants."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.jobstate import STAGE_PLANS, overall_fraction, queue_for, record_event
from app.core.settings import Settings
from models.progress import ProgressEvent


def test_record_event_keeps_every_stage_in_order() -> None:
    doc = record_event({}, ProgressEvent("mine", 1, 4))
    doc = record_event(doc, ProgressEvent("mine", 4, 4))
    doc = record_event(doc, ProgressEvent("pairs", 2, 10, epoch=None, metrics={"n": 3}))
    assert doc["order"] == ["mine", "pairs"]
    assert doc["stages"]["mine"]["done"] == 4
    assert doc["stages"]["pairs"]["metrics"] == {"n": 3.0}


def test_overall_fraction_counts_earlier_stages_as_done() -> None:
    plan = STAGE_PLANS["regenerate"]
    (first, w0), (second, w1) = plan[0], plan[1]
    total = sum(w for _, w in plan)
    doc = record_event({}, ProgressEvent(first, 5, 5))
    doc = record_event(doc, ProgressEvent(second, 1, 2))
    expected = (w0 + 0.5 * w1) / total
    assert overall_fraction("regenerate", "running", doc) == pytest.approx(expected, abs=1e-4)
    assert overall_fraction("regenerate", "succeeded", doc) == 1.0
    assert overall_fraction("regenerate", "queued", {}) == 0.0
    # an unplanned stage shows up in the document but does not move the bar
    doc2 = record_event(doc, ProgressEvent("extra", 1, 1))
    assert overall_fraction("regenerate", "running", doc2) == overall_fraction(
        "regenerate", "running", doc
    )


def test_queue_routing_by_device() -> None:
    assert queue_for("cuda", "cpu") == "gpu"
    assert queue_for("cpu", "gpu") == "cpu"
    assert queue_for("auto", "gpu") == "gpu"
    with pytest.raises(ValueError, match="device"):
        queue_for("tpu", "cpu")


def test_time_limits_must_be_ordered() -> None:
    Settings(soft_time_limit_s=10, hard_time_limit_s=20, visibility_timeout_s=30, lease_s=5)
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        Settings(soft_time_limit_s=10, hard_time_limit_s=20, visibility_timeout_s=20)
    with pytest.raises(ValidationError, match="soft_time_limit_s"):
        Settings(soft_time_limit_s=30, hard_time_limit_s=20, visibility_timeout_s=40)


def test_embedded_defaults_live_under_the_data_dir(tmp_path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'dr4sr.sqlite'}"
    assert s.embedded_broker and s.resolved_broker_url.startswith("filesystem://")
    assert s.resolved_storage_url == str(tmp_path.resolve() / "artifacts")
    assert s.queues == ["cpu", "gpu"]
    with pytest.raises(ValueError, match="worker_queues"):
        _ = Settings(worker_queues="cpu,tpu").queues
