"""Issue 14: on a dense log the adaptive beta keeps pattern rows within the
budget, an explicit beta wins, and a lopsided regenerated dataset is warned
about in the statistics, the reports and the CLI, naming the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from models.composition import SHORT_SHARE_LIMIT, composition, composition_warnings
from models.data.preprocess import prepare
from models.data.sequences import RowSource, Sequences, TrainRows
from models.data.synthetic import generate, write
from models.patterns import DEFAULT_MAX_PATTERN_RATIO, mine_patterns, pattern_budget
from models.pipeline import RegenerationConfig, TrainJobConfig, regenerate, train

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
# 80 users with 40-80 interactions each, every one holding 8-12 planted
# patterns: beta = 2 mines about 80 patterns per user, as MovieLens-100k does.
DENSE = dict(num_users=80, num_items=120, num_patterns=30, patterns_per_user=(8, 12), min_len=40, max_len=80, seed=1)
SMALL = {"d_model": 16, "ffn_dim": 32, "cond_ffn_dim": 32, "cond_hidden": 16}
TINY = dict(pretrain_epochs=0, regenerator_epochs=1, device="cpu", regenerator=SMALL)


@pytest.fixture(scope="module")
def dense():
    return prepare(generate(**DENSE).interactions, name="dense")


@pytest.fixture(scope="module")
def adaptive(dense, tmp_path_factory):
    return regenerate(dense, RegenerationConfig(**TINY), tmp_path_factory.mktemp("adaptive") / "out")


@pytest.fixture(scope="module")
def beta_two(dense, tmp_path_factory):
    return regenerate(dense, RegenerationConfig(beta=2, **TINY), tmp_path_factory.mktemp("beta2") / "out")


def test_the_synthetic_log_is_dense(dense):
    split = dense.split(50)
    assert len(mine_patterns(split.mining, 5, 2)) > 20 * len(split.train)


def test_default_beta_keeps_pattern_rows_within_the_budget(dense, adaptive):
    users = dense.split(50).train
    counts = adaptive.rows.counts()
    mined = adaptive.stats["patterns"]
    assert counts["pattern"] <= DEFAULT_MAX_PATTERN_RATIO * len(users)
    assert mined["beta_rule"] == "adaptive" and mined["beta"] > 2
    assert mined["max_patterns"] == pattern_budget(len(users))
    comp = adaptive.stats["composition"]
    assert comp["original_rows"] == len(users) == counts["original"]
    assert comp["pattern_ratio"] == pytest.approx(counts["pattern"] / len(users), abs=1e-4)
    assert comp["regenerated_ratio"] == pytest.approx(counts["regenerated"] / len(users), abs=1e-4)
    assert not any(w["code"] == "pattern_rows_dominate" for w in adaptive.stats["warnings"])


def test_explicit_beta_wins_and_the_result_warns(beta_two, adaptive):
    mined = beta_two.stats["patterns"]
    assert mined["beta_rule"] == "set" and mined["beta"] == 2 and mined["max_patterns"] is None
    assert mined["patterns"] > 20 * adaptive.stats["patterns"]["patterns"]
    warnings = {w["code"]: w for w in beta_two.stats["warnings"]}
    assert warnings["pattern_rows_dominate"]["parameter"] == "beta"
    assert "raise beta" in warnings["pattern_rows_dominate"]["message"]
    # the same warnings reach stats.json (the job result) and the regeneration's page
    stats = json.loads((beta_two.out_dir / "stats.json").read_text())
    assert stats["warnings"] == beta_two.stats["warnings"]
    page = (beta_two.out_dir / "report.html").read_text()
    assert "pattern rows dominate" in page and "<code>beta</code>" in page


def test_training_report_on_lopsided_data_warns(dense, beta_two, tmp_path):
    outcome = train(dense, beta_two.rows, TrainJobConfig(epochs=1, device="cpu"), tmp_path / "t")
    assert {w["code"] for w in outcome.report["warnings"]} >= {"pattern_rows_dominate"}
    assert outcome.report["composition"]["pattern_ratio"] > 20
    page = (tmp_path / "t" / "report.html").read_text()
    assert "Warning" in page and "max_pattern_ratio" in page and "Training rows by source" in page


def test_training_report_on_original_rows_has_no_warning(dense, tmp_path):
    outcome = train(dense, None, TrainJobConfig(epochs=1, device="cpu"), tmp_path / "t")
    assert "warnings" not in outcome.report and "composition" not in outcome.report


def test_cli_regenerate_prints_the_warning(tmp_path):
    data = write(tmp_path / "dense.csv", generate(**DENSE))
    args = ["regenerate", str(data), "--out", str(tmp_path / "r"), "--beta", "2", "--epochs", "1",
            "--pretrain-epochs", "0", "--device", "cpu", "--set", f"regenerator={json.dumps(SMALL)}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "warning: pattern rows dominate" in result.stderr and "[parameter: beta]" in result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["beta_rule"] == "set" and summary["pattern_ratio"] > 20
    assert {w["code"] for w in summary["warnings"]} >= {"pattern_rows_dominate"}


def _rows(lengths_by_source: dict[RowSource, list[int]]) -> TrainRows:
    rows = None
    for source, lengths in lengths_by_source.items():
        seqs = Sequences.from_lists([list(range(1, n + 1)) for n in lengths])
        part = TrainRows.build(seqs, source)
        rows = part if rows is None else rows.concat(part)
    return rows


def test_balanced_mix_has_no_warning():
    # Beauty's mix under the fixed profile: 22,363 / 40,664 / 31,951 rows, in hundreds
    rows = _rows({RowSource.ORIGINAL: [6] * 224, RowSource.PATTERN: [2] * 282 + [3] * 125,
                  RowSource.REGENERATED: [3] * 320})
    comp = composition(rows)
    assert comp["pattern_ratio"] == pytest.approx(407 / 224, abs=1e-4)
    assert composition_warnings(comp, beta_set=False) == []


def test_regenerated_rows_dominating_name_k_memories():
    rows = _rows({RowSource.ORIGINAL: [6] * 10, RowSource.REGENERATED: [5] * 90})
    (warning,) = composition_warnings(composition(rows), beta_set=False)
    assert warning["code"] == "regenerated_rows_dominate" and warning["parameter"] == "k_memories"
    # under the patterns-only ablation the regenerated rows are the patterns
    (warning,) = composition_warnings(composition(rows), beta_set=False, patterns_only=True)
    assert warning["parameter"] == "max_pattern_ratio"


def test_short_rows_dominating_name_the_source_knob():
    rows = _rows({RowSource.ORIGINAL: [6] * 30, RowSource.PATTERN: [3] * 30, RowSource.REGENERATED: [2] * 140})
    comp = composition(rows)
    assert comp["short_share"] == pytest.approx(0.7) and comp["short_share"] <= SHORT_SHARE_LIMIT
    assert composition_warnings(comp) == []
    rows = _rows({RowSource.ORIGINAL: [6] * 10, RowSource.PATTERN: [2] * 40, RowSource.REGENERATED: [2] * 50})
    warnings = {w["code"]: w for w in composition_warnings(composition(rows), beta_set=False)}
    assert set(warnings) == {"short_rows_dominate"}
    assert warnings["short_rows_dominate"]["parameter"] == "k_memories"
    assert "90%" in warnings["short_rows_dominate"]["message"]


def test_budget_validation():
    with pytest.raises(ValueError, match="max_pattern_ratio"):
        pattern_budget(10, 0)
    with pytest.raises(ValueError):
        RegenerationConfig(max_pattern_ratio=0)


@pytest.mark.shared_data
def test_ml100k_default_keeps_patterns_within_twice_the_users():
    path = SHARED_DATA / "ml-100k.inter"
    if not path.exists():
        pytest.skip(f"{path} not available")
    split = prepare(path).split(50)
    users = len(split.train)
    mined = mine_patterns(split.mining, 5, 2, max_patterns=pattern_budget(users))
    assert users == 943
    assert len(mined) <= 2 * users and mined.min_support == 12 and len(mined) == 1_833
    assert int(np.sum(mine_patterns(split.mining, 5, mined.min_support - 1).support > 0)) > 2 * users
