"""End-to-end stages of models.pipeline and the CLI on tiny synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from app.cli import cli
from models.config import describe_error
from models.data.preprocess import prepare
from models.data.sequences import RowSource, load_rows
from models.data.synthetic import generate, write
from models.pipeline import RegenerationConfig, TrainJobConfig, compare, redecode, regenerate, train
from models.progress import Cancelled, ProgressEvent


@pytest.fixture(scope="module")
def dataset():
    return prepare(generate(num_users=220, num_items=90, num_patterns=15, seed=3).interactions, name="tiny")


@pytest.fixture(scope="module")
def regenerated(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("regen") / "out"
    config = RegenerationConfig(regenerator_epochs=2, pretrain_epochs=2)
    return regenerate(dataset, config, out), out


def test_regenerate_writes_every_artifact(regenerated):
    outcome, out = regenerated
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "patterns.npz", "regenerated.npz", "regenerator", "report.html", "stats.json"]
    rows = load_rows(out / "regenerated.npz")
    counts = rows.counts()
    assert counts == outcome.rows.counts()
    # the default (fixed) profile: the original rows once (Q1 fixed), every pattern once
    assert counts["original"] == outcome.stats["dataset"]["users"]
    assert counts["pattern"] == outcome.stats["patterns"]["patterns"]
    assert (rows.seqs.lengths >= 2).all()
    stats = json.loads((out / "stats.json").read_text())
    assert {"mine_s", "pairs_s", "pretrain_s", "regenerator_s", "decode_s", "total_s"} <= set(stats["timings"])
    assert json.loads((out / "config.json").read_text())["regeneration"]["profile"] == "fixed"


def test_regeneration_and_training_record_what_they_ran_on(regenerated, dataset, tmp_path, monkeypatch):
    """A seed reproduces a regeneration bit for bit only on the same software
    and CPU kernel path, so the folder and the train report name both."""
    import torch

    _, out = regenerated
    made_on = json.loads((out / "config.json").read_text())["environment"]
    assert made_on["torch"] == torch.__version__
    assert made_on["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert made_on["torch_threads"] == torch.get_num_threads() and made_on["cpu"]
    assert "kernel_variables" not in made_on or "MKL_CBWR" not in made_on["kernel_variables"]
    # a pinned kernel path is part of the record; a folder decoded again keeps where it was trained
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    again = tmp_path / "again"
    redecode(dataset, RegenerationConfig(regenerator_epochs=2, pretrain_epochs=2,
                                         regenerator={"restrictive_steps": 1}), out, again)
    written = json.loads((again / "config.json").read_text())
    assert written["environment"]["kernel_variables"] == {"MKL_CBWR": "AVX2"}
    assert written["regenerator_environment"] == made_on
    outcome = train(dataset, None, TrainJobConfig(epochs=1), tmp_path / "trained")
    assert outcome.report["environment"]["kernel_variables"] == {"MKL_CBWR": "AVX2"}
    assert json.loads((tmp_path / "trained" / "report.json").read_text())["environment"] == outcome.report["environment"]
    page = (tmp_path / "trained" / "report.html").read_text()
    assert "Environment" in page and "MKL_CBWR" in page and torch.__version__ in page


def test_a_seed_regenerates_the_same_rows_in_another_process(regenerated, tmp_path):
    """Bit-for-bit reproducibility on one machine: a fresh process (its own
    hash seed, allocator and thread pool) regenerates byte-identical rows."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, out = regenerated
    script = (
        "import sys; from models.data.synthetic import generate; from models.data.preprocess import prepare; "
        "from models.pipeline import RegenerationConfig, regenerate; "
        "d = prepare(generate(num_users=220, num_items=90, num_patterns=15, seed=3).interactions, name='tiny'); "
        "regenerate(d, RegenerationConfig(regenerator_epochs=2, pretrain_epochs=2), sys.argv[1])"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "other")], cwd=root, env=env, check=True, timeout=600)
    ours, theirs = np.load(out / "regenerated.npz"), np.load(tmp_path / "other" / "regenerated.npz")
    assert ours.files == theirs.files
    for name in ours.files:
        assert np.array_equal(ours[name], theirs[name]), name


def test_regenerate_cancelled_leaves_nothing(dataset, tmp_path):
    def cancel_at_regenerator(event: ProgressEvent) -> None:
        if event.stage.startswith("regenerator"):
            raise Cancelled()

    out = tmp_path / "cancelled"
    with pytest.raises(Cancelled):
        regenerate(dataset, RegenerationConfig(regenerator_epochs=1, pretrain_epochs=1), out, cancel_at_regenerator)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_patterns_only_ablation_uses_patterns_as_regenerated_rows(dataset, tmp_path):
    outcome = regenerate(dataset, RegenerationConfig(ablation="patterns_only"), tmp_path / "b")
    regen = outcome.rows.source == RowSource.REGENERATED
    assert regen.sum() == outcome.stats["patterns"]["patterns"]
    assert not (outcome.rows.source == RowSource.PATTERN).any()


@pytest.mark.parametrize(
    ("values", "field"),
    [({"alpha": 1}, "alpha"), ({"beta": 0}, "beta"), ({"k_memories": 0}, "k_memories"),
     ({"profile": "fast"}, "profile"), ({"bogus": 1}, "bogus"), ({"regenerator": {"nope": 1}}, "regenerator.nope"),
     ({"regenerator": {"n_heads": 3}}, "regenerator.n_heads"), ({"max_len": 120}, "max_len")],
)
def test_regeneration_config_errors_name_the_field(values, field):
    with pytest.raises(ValidationError) as info:
        RegenerationConfig.model_validate(values)
    path, message = describe_error(info.value)
    assert path == field and message.startswith(f"{field}: ")


def test_max_len_above_the_position_table_is_rejected_before_any_work():
    with pytest.raises(ValidationError, match="max_src_len = 50"):
        RegenerationConfig(max_len=80)
    assert RegenerationConfig(max_len=80, regenerator={"max_src_len": 80}).regenerator_config().max_src_len == 80


def test_train_config_rejects_unknown_model_and_foreign_overrides():
    with pytest.raises(ValidationError) as info:
        TrainJobConfig.model_validate({"model": "bert4rec"})
    assert describe_error(info.value)[0] == "model"
    with pytest.raises(ValidationError) as info:
        TrainJobConfig.model_validate({"model": "sasrec", "model_overrides": {"rnn_size": 8}})
    assert describe_error(info.value)[0] == "model_overrides.rnn_size"


def test_train_writes_checkpoint_report_and_topk(dataset, tmp_path):
    import polars as pl

    from models.training import load_model

    outcome = train(dataset, None, TrainJobConfig(epochs=2, topk=5), tmp_path / "run")
    out = tmp_path / "run"
    assert {"model.safetensors", "config.json", "report.json", "report.html", "topk.parquet", "per_user.npz"} <= {
        p.name for p in out.iterdir()}
    assert outcome.report["variant"] == "original"
    model = load_model(out)
    assert model.num_items == dataset.num_items
    top = pl.read_parquet(out / "topk.parquet")
    assert top.height == 5 * dataset.num_users
    assert set(top["item_id"]) <= set(dataset.item_ids[1:].tolist())
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 1 and "ndcg@20" in html


def test_compare_reports_significance_against_original(dataset, regenerated, tmp_path):
    outcome, _ = regenerated
    # parity weights original rows too: this one-epoch regeneration may decode
    # no regenerated row, and the default (fixed) profile then refuses DR4SR+
    cfg = TrainJobConfig(epochs=1, personalizer={"profile": "parity", "warmup_epochs": 0, "interval": 3})
    result = compare(dataset, outcome.rows, ["sasrec"], ["original", "dr4sr", "dr4sr+"], cfg, tmp_path / "cmp")
    runs = {r["variant"]: r for r in result.report["runs"]}
    assert set(runs) == {"original", "dr4sr", "dr4sr+"}
    assert "significance" not in runs["original"]
    for variant in ("dr4sr", "dr4sr+"):
        sig = runs[variant]["significance"]
        assert 0.0 <= sig["t_p"] <= 1.0 or np.isnan(sig["t_p"])
    assert set(result.report["weights"]) >= {"original", "pattern"}
    assert (tmp_path / "cmp" / "report.html").exists()


def test_compare_over_seeds_reports_mean_sd_and_pooled_tests(dataset, regenerated, tmp_path):
    outcome, _ = regenerated
    result = compare(dataset, outcome.rows, ["sasrec"], ["original", "dr4sr"], TrainJobConfig(epochs=1),
                     tmp_path / "seeds", seeds=[1, 2])
    report = result.report
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [
        ("original", 1), ("dr4sr", 1), ("original", 2), ("dr4sr", 2)]
    assert report["seeds"] == [1, 2]
    summary = {r["variant"]: r for r in report["summary"]}
    ndcgs = [r["test"]["ndcg@20"] for r in report["runs"] if r["variant"] == "dr4sr"]
    assert summary["dr4sr"]["seeds"] == 2
    assert summary["dr4sr"]["test_mean"]["ndcg@20"] == pytest.approx(np.mean(ndcgs))
    assert summary["dr4sr"]["test_sd"]["ndcg@20"] == pytest.approx(np.std(ndcgs, ddof=1))
    assert "t_p" in summary["dr4sr"]["significance"] and "significance" not in summary["original"]
    html = (tmp_path / "seeds" / "report.html").read_text()
    assert "Runs per seed" in html and " ± " in html
    with pytest.raises(ValidationError, match="seeds"):
        compare(dataset, outcome.rows, ["sasrec"], ["original"], TrainJobConfig(epochs=1), tmp_path / "x",
                seeds=[3, 3])


def test_a_loss_filtered_compare_scores_with_its_original_arm(dataset, tmp_path):
    """row_filter 'loss' needs a model of the original rows, which a compare
    trains anyway as its original arm: that arm is trained once and is the
    scorer, and the DR4SR run is the one a standalone filtered run gives."""
    from models.data.sequences import Sequences, TrainRows

    split = dataset.split(50)
    pairs = [seq[i:i + 2] for seq in split.train.seqs.to_lists()[:60] for i in range(0, len(seq) - 1, 3)]
    rows = split.train.concat(TrainRows.build(Sequences.from_lists(pairs), RowSource.REGENERATED))
    cfg = TrainJobConfig(epochs=2, row_filter="loss", row_filter_keep=0.5, seed=4)
    stages: list[str] = []
    result = compare(dataset, rows, ["sasrec"], ["dr4sr", "original"], cfg, tmp_path / "cmp",
                     progress=lambda e: stages.append(e.stage))
    runs = result.report["runs"]
    assert [r["variant"] for r in runs] == ["dr4sr", "original"]  # the order asked for
    assert not any("scorer:" in s for s in stages)  # the original was not trained a second time
    scorer = runs[0]["row_filter"]["scorer"]
    assert scorer["reused"] is True and scorer["test"] == runs[1]["test"]
    alone = train(dataset, rows, cfg, tmp_path / "alone")
    assert alone.report["row_filter"]["scorer"]["reused"] is False
    assert alone.report["row_filter"]["kept_rows"] == runs[0]["row_filter"]["kept_rows"] == (len(pairs) + 1) // 2
    assert runs[0]["test"] == pytest.approx(alone.report["test"])
    # both reports say what was kept and where the scorer came from
    compared = (tmp_path / "cmp" / "report.html").read_text()
    assert "Filter of the regenerated rows" in compared and "the original arm of this comparison" in compared
    assert f"{runs[0]['row_filter']['kept_rows']:,} of {len(pairs):,}" in compared
    assert ">trained, test NDCG@20" in (tmp_path / "alone" / "report.html").read_text()
    # the filter does not combine with DR4SR+: refused before any arm is trained
    stages.clear()
    with pytest.raises(ValidationError, match="does not combine with DR4SR"):
        compare(dataset, rows, ["sasrec"], ["original", "dr4sr+"], cfg, tmp_path / "no",
                progress=lambda e: stages.append(e.stage))
    assert stages == []


def test_cli_regenerate_then_train_end_to_end(tmp_path):
    log = write(tmp_path / "log.csv", generate(num_users=150, num_items=70, num_patterns=12, seed=5))
    runner = CliRunner()
    res = runner.invoke(cli, ["regenerate", str(log), "--out", str(tmp_path / "regen"), "--epochs", "1",
                              "--pretrain-epochs", "1", "--export", "jsonl"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "regen" / "regenerated.jsonl").exists()
    res = runner.invoke(cli, ["train", str(log), "--regenerated", str(tmp_path / "regen"), "--epochs", "1",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "test metrics" in res.output
    # DR4SR+ under the default (fixed) profile re-weights only regenerated rows,
    # and this one-epoch regeneration decoded none: the CLI says so in one line
    assert json.loads((tmp_path / "regen" / "stats.json").read_text())["rows"]["regenerated"] == 0
    res = runner.invoke(cli, ["train", str(log), "--regenerated", str(tmp_path / "regen"), "--epochs", "1",
                              "--personalize", "--out", str(tmp_path / "plus")])
    assert res.exit_code == 2 and "no training row comes from a weighted source" in res.output, res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli, ["evaluate", str(tmp_path / "run"), str(log), "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["test"]["ndcg@20"] >= 0
    # decode the same regenerator again, keeping only decodes in their source's order
    res = runner.invoke(cli, ["regenerate", str(log), "--from", str(tmp_path / "regen"), "--out",
                              str(tmp_path / "ordered"), "--set", "regenerator.order=source"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "ordered" / "stats.json").read_text())
    assert stats["redecoded_from"] == str(tmp_path / "regen") and stats["regenerated"]["order"] == "source"
    assert stats["pretrain"] == json.loads((tmp_path / "regen" / "stats.json").read_text())["pretrain"]
    # a training setting cannot change without training: refused, named, nothing written
    res = runner.invoke(cli, ["regenerate", str(log), "--from", str(tmp_path / "regen"), "--out",
                              str(tmp_path / "other"), "--epochs", "2"])
    assert res.exit_code == 2 and "epochs" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "other").exists()


def test_cli_reports_bad_parameters_without_traceback(tmp_path):
    log = write(tmp_path / "log.csv", generate(num_users=60, num_items=40, seed=1))
    res = CliRunner().invoke(cli, ["regenerate", str(log), "--alpha", "1"])
    assert res.exit_code == 2
    assert "alpha:" in res.output and "Traceback" not in res.output


def test_without_pad_removes_parity_pad_holes():
    from models.data.sequences import Sequences, TrainRows

    rows = TrainRows(Sequences.from_lists([[1, 0, 2], [3, 0], [4, 5]]), np.array([2, 2, 0], np.uint8), np.array([1, 2, 3]))
    clean = rows.without_pad()
    assert clean.seqs.to_lists() == [[1, 2], [4, 5]]
    assert clean.user.tolist() == [1, 3] and clean.source.tolist() == [2, 0]


def test_no_diversity_ablation_trains_a_single_memory_regenerator(dataset, tmp_path):
    from models.regenerator import load_regenerator

    outcome = regenerate(dataset, RegenerationConfig(ablation="no_diversity", regenerator_epochs=1, pretrain_epochs=1),
                         tmp_path / "a")
    assert load_regenerator(tmp_path / "a" / "regenerator").config.num_memories == 1
    assert set(outcome.stats["regenerated"].get("rows_per_memory", {})) <= {"0", 0}


def test_redecode_reproduces_the_regeneration_and_applies_new_decode_settings(dataset, regenerated, tmp_path):
    outcome, out = regenerated
    config = RegenerationConfig(regenerator_epochs=2, pretrain_epochs=2)
    again = redecode(dataset, config, out, tmp_path / "same")
    before, after = load_rows(out / "regenerated.npz"), load_rows(tmp_path / "same" / "regenerated.npz")
    assert np.array_equal(before.seqs.items, after.seqs.items) and np.array_equal(before.source, after.source)
    assert again.stats["redecoded_from"] == str(out)
    assert again.stats["patterns"] == outcome.stats["patterns"]
    ordered = redecode(dataset, RegenerationConfig(regenerator_epochs=2, pretrain_epochs=2,
                                                   regenerator={"order": "source"}), out, tmp_path / "ordered")
    stats = ordered.stats["regenerated"]
    assert stats["order"] == "source"
    dropped = stats["decodes_out_of_source_order"]
    assert ordered.rows.counts()["regenerated"] <= outcome.rows.counts()["regenerated"]
    assert dropped == outcome.stats["regenerated"]["decodes_out_of_source_order"]
    forward = redecode(dataset, RegenerationConfig(regenerator_epochs=2, pretrain_epochs=2,
                                                   regenerator={"copy_order": "forward"}), out, tmp_path / "forward")
    stats = forward.stats["regenerated"]
    assert stats["copy_order"] == "forward" and stats["decodes_out_of_source_order"] == 0
    assert outcome.stats["regenerated"]["copy_order"] == "any"


@pytest.mark.parametrize("changes, named", [
    ({"regenerator_epochs": 3}, "epochs"),  # the regenerator was trained otherwise
    ({"alpha": 4}, "alpha"),  # other patterns
    ({"regenerator": {"d_model": 32, "n_heads": 2, "cond_heads": 2}}, "d_model"),
])
def test_redecode_refuses_what_decoding_cannot_change(dataset, regenerated, tmp_path, changes, named):
    _, out = regenerated
    config = RegenerationConfig(**{"regenerator_epochs": 2, "pretrain_epochs": 2, **changes})
    with pytest.raises(ValueError, match=named):
        redecode(dataset, config, out, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("loss, words", [
    ("bce", "1 uniform negative"), ("ce", "full softmax"), ("sampled_ce", "softmax over 64 uniform negatives"),
])
def test_the_report_names_the_negatives_of_each_loss(loss, words):
    from types import SimpleNamespace

    from models.pipeline import _protocol

    cfg = TrainJobConfig(loss=loss, num_negatives=64)
    assert words in _protocol(cfg, SimpleNamespace(test=[0, 1]))["negatives"]


def test_target_models_default_to_the_sampled_softmax_but_pretraining_keeps_bce(dataset, monkeypatch, tmp_path):
    """The default loss moved to sampled_ce; the regenerator's pre-training must
    not follow it, or every regeneration would change with the target default."""
    import models.training

    assert TrainJobConfig().loss == "sampled_ce"
    seen = []

    class Stop(Exception):
        pass

    def capture(train, valid, test, num_items, config, *args, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(models.training, "train_model", capture)
    with pytest.raises(Stop):
        regenerate(dataset, RegenerationConfig(regenerator_epochs=1, pretrain_epochs=1), tmp_path / "out")
    assert [c.loss for c in seen] == ["bce"]
    assert not (tmp_path / "out").exists()
