"""The CLI's progress rendering when stderr is not a terminal."""

from __future__ import annotations

import io

import pytest

from app.tty import TerminalProgress
from models.progress import ProgressEvent


def test_lines_mode_logs_stage_starts_epochs_and_ends_without_flooding():
    out = io.StringIO()
    progress = TerminalProgress(stream=out, interval_s=3600)
    assert progress.mode == "lines"  # a StringIO is not a terminal
    progress(ProgressEvent("mine", 0, None, message="mining patterns"))
    for epoch in (1, 2):
        for batch in range(1, 101):
            progress(ProgressEvent("regenerator", (epoch - 1) * 100 + batch, 200, epoch=epoch,
                                   metrics={"loss": 1.0 / batch}))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines  # mine start, regenerator start, epoch 2 begins, stage done
    assert "mine" in lines[0] and "mining patterns" in lines[0]
    assert "regenerator 1/200" in lines[1] and "epoch 1" in lines[1]
    assert "epoch 2" in lines[2]
    assert "regenerator 200/200 (100%)" in lines[3] and "loss=0.01" in lines[3]


def test_mode_from_environment(monkeypatch):
    monkeypatch.setenv("DR4SR_PROGRESS", "off")
    out = io.StringIO()
    progress = TerminalProgress(stream=out)
    progress(ProgressEvent("mine", 1, 2))
    assert not progress.enabled and out.getvalue() == ""
    monkeypatch.setenv("DR4SR_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="DR4SR_PROGRESS"):
        TerminalProgress(stream=out)


def test_lines_mode_does_not_reannounce_a_returning_stage():
    out = io.StringIO()
    progress = TerminalProgress(stream=out, interval_s=3600)
    for epoch in range(3):  # a trainer: batches, then one validation event per epoch
        for batch in range(1, 11):
            progress(ProgressEvent("pretrain", batch, 10, epoch=epoch))
        progress(ProgressEvent("pretrain:valid", epoch + 1, 3, epoch=epoch, metrics={"ndcg@20": 0.01}))
    lines = out.getvalue().splitlines()
    # first start line, then per epoch: training finished + validation
    assert len(lines) == 1 + 3 * 2, lines
    assert sum("pretrain 1/10" in line for line in lines) == 1
