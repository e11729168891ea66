"""``dr4sr mine`` end to end on a tiny one-line-per-user file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from typer.testing import CliRunner

from app.commands.patterns import register
from models.data.sequences import Sequences
from models.data.split import leave_one_out
from models.patterns import build_pairs, mine_patterns


def make_cli() -> typer.Typer:
    # A group of its own: a Typer app with a single command would run it
    # without the "mine" subcommand name, whatever else is registered in app.cli.
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def write_txt(path: Path) -> list[list[int]]:
    # Every item occurs in many users, so 5-core keeps everything.
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(40):
        motif = [int(x) for x in rng.permutation(np.arange(1, 11))[:4]]
        noise = [int(x) for x in rng.integers(1, 11, size=rng.integers(3, 8))]
        rows.append(motif + noise)
    path.write_text("".join(f"{u + 1} " + " ".join(map(str, r)) + "\n" for u, r in enumerate(rows)))
    return rows


def test_mine_json_matches_the_library(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    rows = write_txt(path)
    result = CliRunner().invoke(
        make_cli(), ["mine", str(path), "--alpha", "3", "--beta", "2", "--max-pairs", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["beta_rule"] == "set" and stats["beta"] == 2
    split = leave_one_out(Sequences.from_lists(rows))
    patterns = mine_patterns(split.mining, alpha=3, beta=2)
    pairs = build_pairs(split.pair_source, patterns, max_per_source=3)
    # prepare relabels items, which changes neither counts nor supports
    assert stats["users"] == 40 and stats["items"] == 10
    assert stats["patterns"] == len(patterns) > 0
    assert stats["max_support"] == int(patterns.support.max())
    assert stats["matches"] == int(pairs.matches.sum())
    assert stats["pairs"] == len(pairs)
    assert stats["sources_at_cap"] == int((pairs.matches >= 3).sum())


def test_mine_default_beta_adapts_to_the_budget(tmp_path: Path) -> None:
    # 40 users over 10 items: beta = 2 finds 106 patterns, more than 2 x 40 original rows.
    path = tmp_path / "tiny.txt"
    rows = write_txt(path)
    split = leave_one_out(Sequences.from_lists(rows))
    result = CliRunner().invoke(make_cli(), ["mine", str(path), "--alpha", "3", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    expected = mine_patterns(split.mining, alpha=3, beta=2, max_patterns=80)
    assert len(mine_patterns(split.mining, alpha=3, beta=2)) > 80
    assert stats["beta_rule"] == "adaptive" and stats["max_patterns"] == 80
    assert stats["patterns"] == len(expected) <= 80 and stats["beta"] == expected.min_support > 2
    assert stats["pattern_ratio"] <= 2.0
    # an explicit beta wins, and the CLI warns that patterns would dominate
    text = CliRunner().invoke(make_cli(), ["mine", str(path), "--alpha", "3", "--beta", "2"])
    assert text.exit_code == 0, text.output
    assert "warning:" in text.output and "[parameter: beta]" in text.output


def test_mine_text_report_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    write_txt(path)
    runner = CliRunner()
    result = runner.invoke(make_cli(), ["mine", str(path), "--match", "window"])
    assert result.exit_code == 0, result.output
    assert "patterns" in result.output and "users with no pair" in result.output
    bad = runner.invoke(make_cli(), ["mine", str(path), "--alpha", "1"])
    assert bad.exit_code == 2 and "alpha" in bad.output
    assert runner.invoke(make_cli(), ["mine", str(path), "--match", "nowhere"]).exit_code != 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    failed = runner.invoke(make_cli(), ["mine", str(empty)])
    assert failed.exit_code == 2 and "error: empty.txt" in failed.output
