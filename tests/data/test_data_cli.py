"""`dr4sr prepare` and `dr4sr synth` through typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from app.cli import cli
from models.data.preprocess import PreparedDataset

runner = CliRunner()


def test_synth_then_prepare(tmp_path):
    out = tmp_path / "synth.csv.gz"
    result = runner.invoke(
        cli, ["synth", str(out), "--users", "80", "--items", "50", "--patterns", "6", "--seed", "4"]
    )
    assert result.exit_code == 0, result.output
    assert out.exists()
    sidecar = json.loads((tmp_path / "synth.csv.gz.patterns.json").read_text())
    assert len(sidecar["patterns"]) == 6 and sidecar["params"]["seed"] == 4

    prepared = tmp_path / "prepared"
    result = runner.invoke(cli, ["prepare", str(out), "--out", str(prepared)])
    assert result.exit_code == 0, result.output
    assert "users" in result.output and "interactions" in result.output
    assert f"saved to {prepared}" in result.output
    d = PreparedDataset.load(prepared)
    assert d.name == "synth" and f"{d.num_users:,}" in result.output


def test_prepare_json_and_column_options(tmp_path):
    path = tmp_path / "log.tsv"
    rows = ["who\twhat\twhen"] + [
        f"u{u}\ti{(u * 7 + k) % 6}\t{k}" for u in range(8) for k in range(6)
    ]
    path.write_text("\n".join(rows) + "\n")
    result = runner.invoke(
        cli,
        ["prepare", str(path), "--user-col", "who", "--item-col", "1", "--time-col", "when",
         "--user-core", "3", "--item-core", "3", "--max-len", "20", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)  # progress lines go to stderr
    assert (stats["users"], stats["items"], stats["max_len"], stats["user_core"]) == (8, 6, 20, 3)


def test_data_errors_exit_nonzero_without_traceback(tmp_path):
    bad = tmp_path / "ratings.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,a,1\nu2,b,yesterday\n")
    result = runner.invoke(cli, ["prepare", str(bad)])
    assert result.exit_code == 1
    assert "ratings.csv line 3, column 'timestamp': cannot parse 'yesterday'" in result.output
    assert "Traceback" not in result.output
    missing = runner.invoke(cli, ["prepare", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1 and "no such file" in missing.output
    core = runner.invoke(cli, ["prepare", str(bad), "--user-core", "50", "--time-col", ""])
    assert core.exit_code == 1 and "k-core" in core.output
    synth = runner.invoke(cli, ["synth", str(tmp_path / "s.xlsx")])
    assert synth.exit_code == 1 and "format" in synth.output
