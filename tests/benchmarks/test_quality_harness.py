"""The quality harness records what the quality table is generated from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {
    "dataset", "model", "variant", "loss", "seed", "profile", "device", "stopped", "best_epoch",
    "seconds", "test", "valid", "commit", "p_vs_original", "per_user",
}


def _synth_log(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A small synthetic log, and an environment whose quality results go under ``tmp_path``."""
    data = tmp_path / "log.csv"
    subprocess.run([sys.executable, "-m", "app.cli", "synth", str(data), "--users", "150", "--items", "60"],
                   cwd=ROOT, check=True, capture_output=True)
    return data, {**os.environ, "DR4SR_QUALITY_RESULTS": str(tmp_path / "benchmarks" / "results")}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    base = tmp_path_factory.mktemp("quality")
    data = base / "log.csv"
    subprocess.run([sys.executable, "-m", "app.cli", "synth", str(data), "--users", "150", "--items", "60"],
                   cwd=ROOT, check=True, capture_output=True)
    env = {**os.environ, "DR4SR_QUALITY_RESULTS": str(base / "benchmarks" / "results")}
    cmd = [
        sys.executable, "benchmarks/quality.py", "--record", "--threads", "1", "--seeds", "1,2",
        "--grid", f"{data} x sasrec x original,dr4sr x bce", "--epochs", "2",
        "--regenerator-epochs", "1", "--pretrain-epochs", "1",
    ]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    table = subprocess.run([sys.executable, "benchmarks/quality_table.py"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-3000:]
    return base, first, again, table


def test_every_run_is_one_complete_jsonl_line(recorded):
    base, first, _, _ = recorded
    lines = (base / "benchmarks" / "results" / "quality.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["variant"], r["seed"]) for r in records] == [
        ("original", 1), ("dr4sr", 1), ("original", 2), ("dr4sr", 2)
    ]
    for r in records:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["stopped"] == "capped"  # 2 epochs with patience 20: never comparable
        assert (base / r["per_user"]).exists()
    for r in records[1::2]:
        p = r["p_vs_original"]
        assert p["metric"] == "ndcg@20" and 0.0 <= p["t_p"] <= 1.0 and p["n"] > 100
        assert r["regeneration"]["shared_by_seeds"]
    # each DR4SR run names the original run it was paired with: the same seed's
    assert [r["p_vs_original"]["original"] for r in records[1::2]] == [r["per_user"] for r in records[0::2]]
    # one regeneration served both seeds
    assert records[1]["regeneration"]["folder"] == records[3]["regeneration"]["folder"]


def test_a_restarted_grid_skips_recorded_runs(recorded):
    _, _, again, _ = recorded
    assert again.stdout.strip() == ""
    assert again.stderr.count("skip (already recorded)") == 4


def test_the_table_is_generated_with_pooled_significance(recorded):
    base, _, _, table = recorded
    text = (base / "benchmarks" / "results" / "quality.md").read_text()
    assert text == table.stdout
    rows = [line for line in text.splitlines() if line.startswith("| log | sasrec | bce")]
    assert len(rows) == 2
    original, dr4sr = rows
    assert "| 1,2 |" in original and "0/2" in original
    cells = [c.strip() for c in dr4sr.split("|")]
    assert cells[12] != "–" and "(W " in cells[12]  # pooled paired test over both seeds
    assert cells[13].startswith("s1 ") and "s2 " in cells[13]
    # which regeneration each seed trained on: its regenerated rows (one shared regeneration here)
    counts = [c.strip().replace(",", "") for c in cells[16].split(";")]
    assert len(counts) == 2 and counts[0] == counts[1] and counts[0].isdigit()
    assert [c.strip() for c in original.split("|")][16] == ""


def _table_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_table", ROOT / "benchmarks" / "quality_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(variant, seed, tag=None, bucket=0, per_user=None, paired=None):
    rec = {"dataset": "d.txt", "model": "sasrec", "variant": variant, "loss": "bce", "seed": seed,
           "bucket_chunk": bucket, "tag": tag, "train_settings": {}, "per_user": per_user}
    if paired is not None:
        rec["p_vs_original"] = {"original": paired}
    return rec


def test_an_untagged_arm_is_pooled_against_the_originals_it_was_paired_with():
    table = _table_module()
    old = _run("original", 1, tag="a", per_user="o1a")
    new = _run("original", 1, tag="b", per_user="o1b")
    other_batching = _run("original", 1, tag="c", bucket=32, per_user="o1c")
    named = _run("dr4sr", 1, paired="o1a")  # recorded with its pairing: that one, even if older
    unnamed = _run("dr4sr", 1)  # an older record: the latest original before it with the same batching
    later = _run("original", 1, tag="d", per_user="o1d")
    records = [old, new, other_batching, named, unnamed, later]
    assert table.paired_originals([named], records) == [old]
    assert table.paired_originals([unnamed], records) == [new]
    assert table.paired_originals([_run("dr4sr", 2)], records) == []  # no original for seed 2


def _per_user_paths(tmp_path, monkeypatch):
    """quality.py's per-user file name of a record (results redirected to tmp_path)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("DR4SR_QUALITY_RESULTS", str(tmp_path))
    import quality

    full = {"profile": None, "personalizer_profile": None, "ablation": "none"}
    return lambda rec: quality._per_user_path({**rec, **full})


def test_runs_on_different_devices_are_different_arms_and_never_pair(tmp_path, monkeypatch):
    table = _table_module()
    cpu = _run("original", 1, per_user="o1")
    gpu = {**_run("original", 1, per_user="o1g"), "device": "NVIDIA H200"}
    gpu_dr4sr = {**_run("dr4sr", 1), "device": "NVIDIA H200"}
    assert table.arm_key(cpu) != table.arm_key(gpu)
    assert table.arm_key(cpu) == table.arm_key({**cpu, "device": "cpu"})  # old records have no device
    assert table.pairs_with(gpu, gpu_dr4sr) and not table.pairs_with(cpu, gpu_dr4sr)
    assert table.paired_originals([gpu_dr4sr], [gpu, cpu]) == [gpu]
    # and their per-user files do not overwrite each other
    path = _per_user_paths(tmp_path, monkeypatch)
    assert path(cpu) != path(gpu)
    assert "NVIDIA_H200" in path(gpu).name


def test_a_loss_filtered_arm_is_its_own_arm_and_pairs_with_the_plain_original():
    """The filter (like ``finetune``) changes nothing on original rows, so the
    plain original run is its baseline; an original with other settings is not."""
    table = _table_module()
    plain = _run("original", 1, per_user="o1")
    other = {**_run("original", 1, per_user="o1x"), "train_settings": {"lr": 0.01}}
    filtered = {**_run("dr4sr", 1), "train_settings": {"row_filter": "loss", "row_filter_keep": 0.5}}
    assert table.arm_key(filtered) != table.arm_key(_run("dr4sr", 1))
    assert table.pairs_with(plain, filtered) and not table.pairs_with(other, filtered)
    assert table.paired_originals([filtered], [plain, other]) == [plain]


def test_the_loss_filter_that_ran_keys_the_arm_however_it_was_asked_for(tmp_path, monkeypatch):
    """Under the 'auto' default an untagged run filters: it is the arm of the
    runs that set row_filter=loss (tagged or not) with the same kept share,
    never the plain DR4SR arm recorded before, and its per-user file does
    not overwrite that arm's."""
    table = _table_module()
    before = _run("dr4sr", 1)  # plain, recorded before the default
    asked = {**_run("dr4sr", 1, tag="loss-filter"), "train_settings": {"row_filter": "loss"}}
    auto = {**_run("dr4sr", 1), "row_filter_resolved": {"row_filter": "loss", "row_filter_keep": 0.5}}
    quarter = {**_run("dr4sr", 1, tag="loss-filter-0.25"),
               "train_settings": {"row_filter": "loss", "row_filter_keep": 0.25}}
    off = {**_run("dr4sr", 1), "train_settings": {"row_filter": "none"}, "row_filter_resolved": None}
    assert table.arm_key(asked) == table.arm_key(auto) != table.arm_key(before)
    assert table.arm_key(quarter) != table.arm_key(auto)
    assert table.arm_key(off) == table.arm_key(before)
    assert table.arm_key({**asked, "tag": "another"}) != table.arm_key(auto)  # only the tags that named it
    assert table.row_filter_arm({**auto, "variant": "original"}) == {}
    path = _per_user_paths(tmp_path, monkeypatch)
    assert path(auto) != path(before) and "-rf0.5" in path(auto).name
    assert "-rf" not in path(asked).name  # it names its settings by their hash already


def test_the_resolved_number_of_negatives_is_part_of_the_arm(tmp_path, monkeypatch):
    """A changed ``num_negatives`` default must not pool runs made under the old
    one: records without the resolved value ran with 256 unless they set it."""
    table = _table_module()

    def sampled(variant, seed, **extra):
        return {**_run(variant, seed, per_user=f"{variant}{seed}"), "loss": "sampled_ce", **extra}

    old_default = sampled("original", 1)  # recorded before the value was written: 256
    explicit = sampled("original", 1, train_settings={"num_negatives": 1024}, tag="negatives-1024")
    new_default = sampled("original", 1, num_negatives=1024)
    new_dr4sr = sampled("dr4sr", 1, num_negatives=1024)
    assert table.negatives(old_default) == 256 and table.negatives(explicit) == 1024
    assert table.negatives(_run("original", 1)) is None  # bce draws no shared negatives
    assert table.arm_key(old_default) != table.arm_key(new_default)
    assert table.arm_key({**explicit, "tag": None}) == table.arm_key(new_default)  # set or defaulted: one arm
    assert table.pairs_with(explicit, new_dr4sr) and table.pairs_with(new_default, new_dr4sr)
    assert not table.pairs_with(old_default, new_dr4sr)
    assert table.paired_originals([new_dr4sr], [explicit, old_default]) == [explicit]
    # per-user files of a new default never overwrite those of the old one
    path = _per_user_paths(tmp_path, monkeypatch)
    assert path(old_default) != path(new_default)
    assert "-n1024" in path(new_default).name
    # and the table names the negatives of each sampled-softmax arm
    text = table.render([{**r, "commit": "x", "test": {"ndcg@20": 0.1, "recall@20": 0.2, "ndcg@10": 0.05},
                          "epochs": 3, "stopped": "early"} for r in (old_default, new_default)], "")
    assert "256 negatives" in text and "1024 negatives" in text


def test_dr4sr_plus_settings_are_recorded_against_the_profiles_as_first_recorded(tmp_path, monkeypatch):
    """The ``fixed`` personalizer gained Adam and normalised weights: a run of
    the new default must key as the old runs that set both by hand, and an old
    ``fixed`` run (SGD) must stay a different arm."""
    _per_user_paths(tmp_path, monkeypatch)
    import quality

    from models.pipeline import TrainJobConfig

    def recorded(**personalizer):
        return quality.personalizer_settings(TrainJobConfig(model="sasrec", personalize=True, personalizer=personalizer))

    by_hand = {"meta_optimizer": "adam", "normalize": True}
    assert recorded() == by_hand  # the job's default is the fixed profile
    assert recorded(profile="fixed", **by_hand) == by_hand
    assert recorded(profile="fixed", meta_optimizer="sgd", normalize=False) == {}  # the old fixed profile
    assert recorded(profile="parity") == {}
    assert recorded(profile="fixed", tau_init=1.0) == {**by_hand, "tau_init": 1.0}
    table = _table_module()
    new = {**_run("dr4sr+", 1), "personalizer_profile": "fixed", "personalizer_settings": recorded()}
    old_by_hand = {**_run("dr4sr+", 1), "personalizer_profile": "fixed", "personalizer_settings": by_hand}
    old_fixed = {**_run("dr4sr+", 1), "personalizer_profile": "fixed", "personalizer_settings": {}}
    assert table.arm_key(new) == table.arm_key(old_by_hand) != table.arm_key(old_fixed)


def test_a_tag_that_named_todays_default_settings_does_not_split_the_arm():
    """Runs tagged ``pers-norm-adam-tau10`` set Adam and normalised weights by
    hand; an untagged run of today's default carries the same settings and is
    the same arm. A repeated seed is counted, not pooled twice."""
    table = _table_module()
    settings = {"meta_optimizer": "adam", "normalize": True}

    def plus(seed, tag, psettings, ndcg):
        return {**_run("dr4sr+", seed, tag=tag), "personalizer_profile": "fixed", "personalizer_settings": psettings,
                "commit": "x", "test": {"ndcg@20": ndcg, "recall@20": 0.2, "ndcg@10": 0.05},
                "epochs": 3, "stopped": "early"}

    tagged = [plus(1, "pers-norm-adam-tau10", settings, 0.10), plus(3, "pers-norm-adam-tau10", settings, 0.30)]
    untagged = [plus(2, None, settings, 0.20), plus(3, None, settings, 0.99)]  # seed 3 again: left out
    assert {table.arm_key(r) for r in tagged + untagged} == {table.arm_key(untagged[0])}
    # the tag still splits runs whose settings are not the ones it named, and any other tag splits
    assert table.arm_key(plus(1, "pers-norm-adam-tau10", {**settings, "tau_init": 1.0}, 0.1)) != table.arm_key(tagged[0])
    assert table.arm_key(plus(1, "other", settings, 0.1)) != table.arm_key(tagged[0])
    rows = [line for line in table.render(tagged + untagged, "").splitlines() if "| dr4sr+ |" in line]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[5] == "1,2,3" and cells[6].startswith("0.2000 ± 0.1000")  # seeds 1-3, the first seed-3 run
    assert "1 later run(s) of a seed left out" in cells[4]


def test_a_run_recorded_before_its_original_gets_its_per_seed_test_in_the_table(tmp_path, monkeypatch):
    """quality.py can only pair a run with an original that exists when it
    finishes; the table pairs the rest with the base arm's run of the same seed."""
    import numpy as np

    table = _table_module()
    monkeypatch.setattr(table, "RESULTS", tmp_path / "benchmarks" / "results")
    rng = np.random.default_rng(0)
    base = rng.random(400)
    for name, values in {"o1": base, "d1": base + 0.05 + 0.01 * rng.standard_normal(400),
                         "o2": base, "d2": base}.items():
        np.savez(tmp_path / f"{name}.npz", **{"ndcg@20": values})
    d1 = _run("dr4sr", 1, per_user="d1.npz")  # recorded first, without p_vs_original
    d2 = _run("dr4sr", 2, per_user="d2.npz")
    originals = [_run("original", 1, per_user="o1.npz"), _run("original", 2, per_user="o2.npz")]
    cells = table._per_seed([d1, d2], originals)
    assert cells[0].startswith("s1 ") and float(cells[0].split()[1]) < 1e-3  # a real lift, found
    assert cells[1] == "s2 1.000"  # identical per-user figures: no difference
    assert table._per_seed([_run("dr4sr", 3, per_user="d1.npz")], originals) == []  # no seed-3 original


def test_quality_groups_compares_two_arms_inside_user_groups(tmp_path):
    # 90 users: the arm gains 0.1 on the users whose test item is rare, nothing elsewhere
    rng = np.random.default_rng(0)
    rows, rare = [], []
    for u in range(1, 91):
        history = list(rng.integers(1, 6, size=int(rng.integers(3, 12))))
        target = 100 + u if u % 3 == 0 else 1  # unseen in training, or the most common item
        rare.append(u % 3 == 0)
        rows.append(" ".join(map(str, [u, *history, 2, target])))
    data = tmp_path / "log.txt"
    data.write_text("\n".join(rows) + "\n")
    folder = tmp_path / "results" / "per_user"
    folder.mkdir(parents=True)
    base = rng.uniform(0, 0.2, size=90).astype(np.float32)
    for seed in (1, 2):
        np.savez(folder / f"base-s{seed}.npz", **{"ndcg@20": base})
        np.savez(folder / f"arm-s{seed}.npz", **{"ndcg@20": base + 0.1 * np.array(rare, np.float32)})
    env = {**os.environ, "DR4SR_QUALITY_RESULTS": str(tmp_path / "results")}
    out = subprocess.run([sys.executable, "benchmarks/quality_groups.py", str(data), "--base", "base-s*.npz",
                          "--arm", "arm-s*.npz"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["base"] == ["base-s1.npz", "base-s2.npz"]
    by_popularity = [g for g in result["groups"] if g["by"] == "test item popularity"]
    assert [g["users"] for g in by_popularity] == [30, 60]  # the top tercile is empty: all 60 share item 1
    assert by_popularity[0]["diff"] == pytest.approx(0.1, abs=1e-5) and by_popularity[0]["p"] < 1e-6
    assert by_popularity[1]["diff"] == pytest.approx(0, abs=1e-6)
    missing = subprocess.run([sys.executable, "benchmarks/quality_groups.py", str(data), "--base", "none*.npz",
                              "--arm", "arm-s*.npz"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no per-user file matches 'none*.npz'" in missing.stderr


def test_loss_filtered_runs_share_one_cached_scorer(tmp_path):
    """The loss filter's scorer is the original arm of the run's settings and
    seed: trained once, cached, and reused by a run with another kept share."""
    data, env = _synth_log(tmp_path)
    records = []
    for keep in ("0.5", "0.25"):
        cmd = [sys.executable, "benchmarks/quality.py", "--record", "--threads", "1", "--seeds", "1",
               "--grid", f"{data} x sasrec x dr4sr x sampled_ce", "--epochs", "2", "--regenerator-epochs", "40",
               "--pretrain-epochs", "1", "--train-set", "row_filter=loss", "--train-set", f"row_filter_keep={keep}",
               "--tag", f"keep-{keep}"]
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert ("training the loss filter's scorer" in run.stderr) == (keep == "0.5")
        records.append(json.loads(run.stdout.strip().splitlines()[-1]))
    first, second = (r["row_filter"] for r in records)
    assert first is not None and first["regenerated_rows"] > 0
    assert first["scorer"] == second["scorer"] and first["scorer"]["reused"] is True
    assert first["scorer"]["from"].startswith("benchmarks/out/scorers/")
    assert (tmp_path / first["scorer"]["from"] / "model.safetensors").is_file()
    assert second["kept_rows"] < first["kept_rows"]


def test_an_original_run_is_kept_as_the_scorer_of_its_seed(tmp_path):
    """In a grid of original,dr4sr the original arm is the loss filter's
    scorer: the dr4sr run (the auto default, sampled_ce) scores with it rather
    than training the same model again."""
    data, env = _synth_log(tmp_path)
    cmd = [sys.executable, "benchmarks/quality.py", "--record", "--threads", "1", "--seeds", "1",
           "--grid", f"{data} x sasrec x original,dr4sr x sampled_ce", "--epochs", "2", "--regenerator-epochs", "40",
           "--pretrain-epochs", "1"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "kept the original run as the loss filter's scorer" in run.stderr
    assert "training the loss filter's scorer" not in run.stderr
    original, filtered = (json.loads(line) for line in run.stdout.strip().splitlines()[-2:])
    assert original["variant"] == "original" and filtered["row_filter_resolved"]["row_filter"] == "loss"
    scorer = filtered["row_filter"]["scorer"]
    assert scorer["reused"] is True and scorer["test"] == original["test"] and scorer["valid"] == original["valid"]
    assert (tmp_path / scorer["from"] / "model.safetensors").is_file()
    assert not list((tmp_path / "benchmarks" / "out" / "scorers").glob("*.partial"))


def test_a_declared_contrast_pairs_two_arms_and_refuses_an_ambiguous_one(tmp_path):
    """contrasts.json names two arms by their fields; the generated section
    gives their means and the paired tests over the seeds both have, says
    which arm is missing, and an ambiguous selector is an error, not a guess."""
    table = _table_module()
    rng = np.random.default_rng(0)
    base_users = rng.random((3, 200))
    records = []
    for seed in (1, 2, 3):
        for name, train, shift in (("plain", {}, 0.0), ("filtered", {"row_filter": "loss", "row_filter_keep": 0.25}, 0.05)):
            path = tmp_path / f"{name}-{seed}.npz"
            np.savez(path, **{"ndcg@20": base_users[seed - 1] + shift})
            records.append({**_run("dr4sr", seed, per_user=str(path)), "train_settings": train,
                            "test": {"ndcg@20": float((base_users[seed - 1] + shift).mean())}})
    extra = tmp_path / "plain-4.npz"  # a seed only the base has: neither paired nor in its mean
    np.savez(extra, **{"ndcg@20": np.ones(200)})
    records.append({**_run("dr4sr", 4, per_user=str(extra)), "test": {"ndcg@20": 1.0}})
    arms, _ = table.group_arms(records)
    shared = {"dataset": "d", "variant": "dr4sr"}
    contrast = {"question": "q", "shared": shared, "base": {"train": {}},
                "arm": {"train": {"row_filter": "loss", "row_filter_keep": 0.25}}}
    lines = table.render_contrasts(arms, [contrast])
    row = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert row[6] == "+0.0500" and row[7] == "1,2,3" and float(row[8]) < 1e-3
    assert float(row[4].split(" ± ")[0]) == pytest.approx(base_users.mean(1).mean(), abs=1e-4)
    assert row[10] == ""
    for rec in records[:-1]:  # the filtered arm's regenerations came from another CPU path
        rec["regeneration"] = {"environment": {"cpu_capability": "AVX2" if rec["train_settings"] else "AVX512"}}
    flagged = table.render_contrasts(table.group_arms(records)[0], [contrast])
    assert "regenerations differ (AVX512 against AVX2" in flagged[-1]
    missing = table.render_contrasts(arms, [{**contrast, "arm": {"train": {"row_filter": "random"}}}])
    assert "arm not recorded yet" in missing[-1]
    with pytest.raises(ValueError, match="matches 2 arms"):
        table.render_contrasts(arms, [{**contrast, "base": {}}])
    with pytest.raises(ValueError, match="unknown arm fields"):
        table.render_contrasts(arms, [{**contrast, "base": {"seed": 1}}])


def test_the_library_path_swaps_sasrecs_cpu_dropout_and_restores_it(monkeypatch):
    """``--library-kernels`` trains SASRec with F.dropout and SDPA's attention
    dropout: inside the block the CPU device is not called and F.dropout is;
    without dropout both paths compute the same outputs; the device is back after."""
    import torch

    import models.recommenders.base as base_module
    from models.batching import Batch
    from models.recommenders import sasrec as sasrec_module
    from models.recommenders.sasrec import SASRec, SASRecConfig

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from library_kernels import sasrec_library_path

    torch.manual_seed(0)
    model = SASRec(30, SASRecConfig(embed_dim=16, ffn_size=24, head_num=2, max_len=8))
    seq = torch.tensor([[1, 2, 3, 4, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12]])
    target = torch.tensor([[2, 3, 4, 5, 0, 0, 0, 0], [6, 7, 8, 9, 10, 11, 12, 13]])
    batch = Batch(input=seq, target=target, lengths=torch.tensor([4, 8]), source=torch.zeros(2, dtype=torch.uint8),
                  row=torch.arange(2))
    device = base_module.dropout
    calls = {"F.dropout": 0}
    real = torch.nn.functional.dropout

    def counted(*args, **kwargs):
        calls["F.dropout"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "dropout", counted)
    model.eval()
    plain = model(batch)
    with sasrec_library_path():
        assert base_module.dropout is not device and sasrec_module.dropout is not device
        torch.testing.assert_close(model(batch), plain)  # dropout off: the same computation
        model.train()
        model.training_loss(batch, "ce").backward()
        assert calls["F.dropout"] > 0
    assert base_module.dropout is device and sasrec_module.dropout is device
    calls["F.dropout"] = 0
    model.training_loss(batch, "ce").backward()
    assert calls["F.dropout"] == 0  # the CPU device again


def test_a_library_kernels_run_is_its_own_tagged_arm_and_sasrec_only(tmp_path):
    data, env = _synth_log(tmp_path)
    base = [sys.executable, "benchmarks/quality.py", "--record", "--threads", "1", "--seeds", "1", "--epochs", "2"]
    runs = {}
    for name, extra in (("device", []), ("library", ["--library-kernels"])):
        run = subprocess.run(base + ["--grid", f"{data} x sasrec x original x ce", *extra], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        runs[name] = json.loads(run.stdout.strip().splitlines()[-1])
    device, library = runs["device"], runs["library"]
    assert library["tag"] == "library-kernels" and library["kernels"] == "library" and "kernels" not in device
    assert library["per_user"] != device["per_user"]  # not skipped as the same run, not overwritten
    # each kept as the scorer of its own kernels, not one in place of the other
    kept = [p for p in (tmp_path / "benchmarks" / "out" / "scorers").glob("log-sasrec-ce-s1-*") if p.is_dir()]
    assert len(kept) == 2
    refused = subprocess.run(base + ["--grid", f"{data} x gru4rec x original x ce", "--library-kernels"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "not for ['gru4rec']" in refused.stderr
