"""Quality under the paper's protocol, recorded: train target models on original,
regenerated (DR4SR) or personalized (DR4SR+) data and append every finished run
to ``benchmarks/results/quality.jsonl``.

One run:

    python benchmarks/quality.py --dataset ../shared/data/amazon-beauty.txt --model sasrec
    python benchmarks/quality.py --dataset ... --variant dr4sr --loss ce --seeds 1,2,3 --record

A grid (datasets x models x variants x losses, every cell for every seed):

    nohup python benchmarks/quality.py --record --seeds 1,2,3 \\
        --grid "../shared/data/amazon-beauty.txt,../shared/data/amazon-sports.txt x sasrec x original,dr4sr,dr4sr+ x bce,ce" \\
        > /tmp/quality.log 2>&1 &

Protocol (the same for every arm): leave-one-out split, full ranking with ties
counted at their expected rank, early stopping on validation NDCG@20 with
patience 20 and at most 1000 epochs. A run that reaches its epoch cap is
recorded with ``stopped: "capped"`` and is not comparable. DR4SR+ with the
``fixed`` personalizer fits its meta-objective on one half of the validation
users and selects its checkpoint on the other half (no split used twice).

One regeneration per (dataset, regeneration settings) serves every seed and
every target model: it is cached under ``benchmarks/out/regen/`` (a file lock
makes a second process wait for it rather than repeat it). With ``--train-set
row_filter=loss`` (or the ``auto`` default with a softmax loss) the scorer
(the original arm of the same model, settings and seed) is trained once and
cached under ``benchmarks/out/scorers/``, so runs that differ only in
``row_filter_keep`` reuse it; an original run puts its own model there, so a
grid of ``original,dr4sr`` trains each seed's original once. Each record's
``row_filter.scorer`` says where its scorer came from.

Per-user test metrics of every run are kept under
``benchmarks/results/per_user/`` so that any two runs on the same dataset can
be paired; a non-original run records ``p_vs_original``, the paired t-test and
Wilcoxon test over users of its test NDCG@20 against the original run with the
same model, loss and seed (when that run exists). ``quality_table.py`` turns
the JSONL into ``quality.md``.

``--library-kernels`` trains SASRec with ``F.dropout`` and SDPA's attention
dropout instead of the CPU dropout device, as its own arm (tag
``library-kernels``, its own cached scorer): the device's quality check.

Runs already in the JSONL (same dataset, model, variant, loss, seed, profiles,
regeneration settings and code) are skipped, so a grid can be restarted.
Progress goes to stderr; every finished run prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.config import LOSSES, PersonalizerOptions  # noqa: E402
from models.data.preprocess import prepare  # noqa: E402
from models.evaluation import paired_significance  # noqa: E402
from models.pipeline import (  # noqa: E402
    RegenerationConfig,
    TrainJobConfig,
    load_rows,
    redecode,
    redecode_mismatch,
    regenerate,
    regenerator_environment,
    train,
)
from models.progress import ProgressEvent  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from library_kernels import sasrec_library_path  # noqa: E402
from quality_table import (  # noqa: E402
    NUM_NEGATIVES_BEFORE_RECORDED,
    arm_key,
    device_class,
    negatives,
    pairs_with,
)

# DR4SR_QUALITY_RESULTS redirects the results folder (the harness's own tests use it);
# per-user paths in the JSONL are relative to its grandparent (the project root by default)
RESULTS = Path(os.environ.get("DR4SR_QUALITY_RESULTS", ROOT / "benchmarks" / "results"))
BASE = RESULTS.parent.parent
JSONL = RESULTS / "quality.jsonl"
PER_USER = RESULTS / "per_user"
REGEN_CACHE = BASE / "benchmarks" / "out" / "regen"
SCORER_CACHE = BASE / "benchmarks" / "out" / "scorers"
VARIANTS = ("original", "dr4sr", "dr4sr+")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _progress(tag: str):
    def log(event: ProgressEvent) -> None:
        if event.stage.endswith("valid") or (
            event.total and event.done == event.total and "train" not in event.stage
        ):
            metrics = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
            _log(f"{tag} {event.stage} epoch={event.epoch} {metrics} {event.message or ''}")

    return log


def _commit() -> str:
    if os.environ.get("DR4SR_COMMIT"):  # a copy without .git (a device machine's) is told its commit
        return os.environ["DR4SR_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "models"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --regen-set/--pers-set expect key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _regen_key(dataset: Path, settings: dict[str, Any]) -> str:
    blob = json.dumps({"dataset": dataset.name, **settings}, sort_keys=True)
    return f"{dataset.stem}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _decodable_from(dataset_path: Path, config: RegenerationConfig) -> Path | None:
    """A cached regeneration of this dataset made by the same training, whose
    regenerator can be decoded again under ``config`` (the first one that
    regenerated from scratch, so that chains of re-decodes share one root)."""
    for folder in sorted(REGEN_CACHE.glob(f"{dataset_path.stem}-*")):
        made = folder / "config.json"
        if not folder.is_dir() or not made.exists() or not (folder / "regenerator").is_dir():
            continue
        stats = json.loads((folder / "stats.json").read_text())
        if "redecoded_from" not in stats and redecode_mismatch(json.loads(made.read_text()), config) is None:
            return folder
    return None


def regenerated_rows(dataset_path: Path, dataset, settings: dict[str, Any], device: str):
    """The cached regeneration for these settings, made once under a file lock."""
    folder = REGEN_CACHE / _regen_key(dataset_path, settings)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first's regeneration
        if not (folder / "regenerated.npz").exists():
            config = RegenerationConfig(device=device, **settings)
            trained = _decodable_from(dataset_path, config)
            if trained is not None:  # only decoding or assembly differs: reuse its regenerator
                _log(f"decoding {trained} again with {settings} -> {folder}")
                redecode(dataset, config, trained, folder, _progress(f"redecode {dataset_path.stem}"))
            else:
                _log(f"regenerating {dataset_path.name} with {settings} -> {folder}")
                regenerate(dataset, config, folder, _progress(f"regen {dataset_path.stem}"))
    stats = json.loads((folder / "stats.json").read_text())
    made_with = json.loads((folder / "config.json").read_text())  # regeneration settings, environment
    return load_rows(folder / "regenerated.npz"), stats, made_with, folder


def _load_records() -> list[dict[str, Any]]:
    if not JSONL.exists():
        return []
    return [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]


def _identity(rec: dict[str, Any]) -> tuple:
    """A run: its arm (as the table groups them) and its seed."""
    return (*arm_key(rec), rec.get("seed"))


def _per_user_path(rec: dict[str, Any]) -> Path:
    parts = [
        Path(rec["dataset"]).stem, rec["model"], rec["variant"].replace("+", "plus"), rec["loss"],
        f"s{rec['seed']}", rec.get("profile") or "none", rec.get("personalizer_profile") or "none",
        rec.get("ablation", "none"), f"b{rec.get('bucket_chunk', 0)}",
    ]
    neg = negatives(rec)
    if neg not in (None, NUM_NEGATIVES_BEFORE_RECORDED):  # 256: the files named before the switch
        parts.append(f"n{neg}")
    if rec.get("regeneration_settings"):
        parts.append(hashlib.sha1(json.dumps(rec["regeneration_settings"], sort_keys=True).encode()).hexdigest()[:8])
    if rec.get("train_settings"):
        parts.append("t" + hashlib.sha1(json.dumps(rec["train_settings"], sort_keys=True).encode()).hexdigest()[:8])
    resolved = rec.get("row_filter_resolved")
    if resolved and (rec.get("train_settings") or {}).get("row_filter") not in ("loss", "random"):  # by default
        parts.append(f"rf{resolved['row_filter_keep']}")
    if rec.get("tag"):
        parts.append(rec["tag"])
    if device_class(rec) != "cpu":
        parts.append(re.sub(r"[^A-Za-z0-9]+", "_", device_class(rec)))
    return PER_USER / ("-".join(parts) + ".npz")


def _original_for(rec: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest original run with the same dataset, model, loss, seed and batching."""
    for other in reversed(records):
        if pairs_with(other, rec) and other.get("per_user") and (BASE / other["per_user"]).exists():
            return other
    return None


def p_vs_original(rec: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    base = _original_for(rec, records)
    if base is None or rec["variant"] == "original":
        return None
    ours = np.load(BASE / rec["per_user"])["ndcg@20"]
    theirs = np.load(BASE / base["per_user"])["ndcg@20"]
    test = paired_significance(ours.astype(np.float64), theirs.astype(np.float64))
    return {"metric": "ndcg@20", "t_p": test["t_p"], "wilcoxon_p": test["wilcoxon_p"],
            "mean_diff": test["mean_diff"], "n": int(test["n"]), "original": base["per_user"]}


# A DR4SR+ record's ``personalizer_settings`` are what its resolved
# personalizer differs in from its profile as the profiles stood when records
# began: SGD, weights not normalised. The ``fixed`` profile has since gained
# Adam and normalised weights; measured against the old profile, a run of the
# new default and an old run with those two overrides are one arm, and an old
# ``fixed`` run stays a different one.
PERSONALIZER_AS_FIRST_RECORDED = {"meta_optimizer": "sgd", "normalize": False}


def _scorer_folder(dataset_path: Path, cfg: TrainJobConfig, kernels: str = "default") -> Path:
    """Where the scorer of ``cfg``'s settings and seed is cached: keyed by
    every training setting except the filter's own (``row_filter``,
    ``row_filter_keep``), so the original arm of a grid has the same key, and
    by ``kernels`` where a run trains on the library path (``--library-kernels``)."""
    plain = cfg.replace(row_filter="none")
    settings = {k: v for k, v in plain.as_dict().items() if k not in ("row_filter", "row_filter_keep")}
    if kernels != "default":
        settings["kernels"] = kernels
    key = hashlib.sha1(json.dumps({"dataset": dataset_path.name, **settings}, sort_keys=True,
                                  default=str).encode()).hexdigest()[:10]
    return SCORER_CACHE / f"{dataset_path.stem}-{cfg.model}-{cfg.loss}-s{cfg.seed}-{key}"


SCORER_FILES = ("model.safetensors", "config.json", "report.json")  # what Scorer.from_folder reads


def cached_scorer(dataset_path: Path, dataset, cfg: TrainJobConfig, tag: str, kernels: str = "default"):
    """The loss filter's scorer for ``cfg``: the original arm of the same
    settings and seed (``row_filter_keep`` aside), trained once and kept under
    SCORER_CACHE (a file lock makes a second process wait for it); an original
    run of those settings recorded earlier has put its own model there
    (``keep_as_scorer``), so a grid of original,dr4sr trains it once."""
    from models.training_filter import Scorer

    folder = _scorer_folder(dataset_path, cfg, kernels)
    SCORER_CACHE.mkdir(parents=True, exist_ok=True)
    with open(SCORER_CACHE / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "report.json").is_file():
            _log(f"training the loss filter's scorer {folder.name}")
            train(dataset, None, cfg.replace(row_filter="none"), folder, _progress(f"{tag} scorer"))
    return Scorer.from_folder(folder, cfg.device, **{"from": str(folder.relative_to(BASE))})


def keep_as_scorer(dataset_path: Path, cfg: TrainJobConfig, work: Path, kernels: str = "default") -> None:
    """An original run's model, its config and its report, copied into the scorer
    cache under the key a loss-filtered run of the same settings and seed looks
    up (the original arm *is* that scorer), unless one is cached already."""
    folder = _scorer_folder(dataset_path, cfg, kernels)
    SCORER_CACHE.mkdir(parents=True, exist_ok=True)
    with open(SCORER_CACHE / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "report.json").is_file():
            return
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in SCORER_FILES:
            shutil.copy2(work / name, staging / name)
        staging.rename(folder)
        _log(f"kept the original run as the loss filter's scorer {folder.name}")


def personalizer_settings(cfg: TrainJobConfig) -> dict[str, Any]:
    built = cfg.personalizer_config()
    first = PersonalizerOptions(profile=cfg.personalizer.profile, **PERSONALIZER_AS_FIRST_RECORDED)
    reference = first.build().as_dict()
    # "mode" (end_to_end) is recorded as the ablation
    return {k: v for k, v in built.as_dict().items() if k != "mode" and v != reference[k]}


def run_one(args, dataset_path: Path, model: str, variant: str, loss: str, seed: int,
            cache: dict) -> dict[str, Any] | None:
    settings = {"profile": args.profile, **_parse_sets(args.regen_set)}
    if args.ablation in ("no_diversity", "patterns_only"):
        settings["ablation"] = args.ablation
    if args.regenerator_epochs is not None:
        settings["regenerator_epochs"] = args.regenerator_epochs
    if args.pretrain_epochs is not None:
        settings["pretrain_epochs"] = args.pretrain_epochs
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    rec: dict[str, Any] = {
        "dataset": dataset_path.name, "model": model, "variant": variant, "loss": loss, "seed": seed,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",  # part of the arm
        "ablation": args.ablation if variant != "original" else "none",
        "profile": settings["profile"] if variant != "original" else None,
        "personalizer_profile": args.personalizer_profile if variant == "dr4sr+" else None,
        "personalizer_settings": {},  # resolved below for dr4sr+
        "regeneration_settings": {k: v for k, v in settings.items() if k != "profile"} if variant != "original" else {},
        "bucket_chunk": args.bucket_chunk,
        "train_settings": _parse_sets(args.train_set),
        "tag": args.tag,
    }
    kernels = "library" if args.library_kernels else "default"
    if args.library_kernels:  # the plain path the CPU dropout device is checked against
        rec["kernels"] = kernels
    personalizer = {"profile": args.personalizer_profile, **_parse_sets(args.pers_set)}
    if args.ablation == "end_to_end":
        personalizer["mode"] = "end_to_end"
    cfg = TrainJobConfig(
        model=model, personalize=variant == "dr4sr+", epochs=args.epochs, patience=args.patience,
        seed=seed, device=device, loss=loss, bucket_chunk=args.bucket_chunk, personalizer=personalizer,
        **rec["train_settings"],
    )
    # the resolved value, part of the arm: a changed default never pools with runs made under the old one
    rec["num_negatives"] = cfg.num_negatives if loss == "sampled_ce" else None
    # likewise the row filter that runs ('auto' resolved; quality_table.row_filter_arm)
    resolved = cfg.resolved_row_filter(cfg.personalize)
    rec["row_filter_resolved"] = ({"row_filter": resolved, "row_filter_keep": cfg.row_filter_keep}
                                  if variant != "original" and resolved != "none" else None)
    if variant == "dr4sr+":
        rec["personalizer_settings"] = personalizer_settings(cfg)
    records = _load_records()
    if not args.force and any(_identity(r) == _identity(rec) for r in records):
        _log(f"skip (already recorded): {dataset_path.name} {model} {variant} {loss} seed {seed}")
        return None
    started = time.perf_counter()
    if dataset_path not in cache:
        cache[dataset_path] = prepare(dataset_path)
    dataset = cache[dataset_path]
    rows, regen_stats, made_with, regen_folder = None, None, None, None
    if variant != "original":
        rows, regen_stats, made_with, regen_folder = regenerated_rows(dataset_path, dataset, settings, device)
        rec["profile"] = made_with["regeneration"]["profile"]
    tag = f"{dataset_path.stem} {model} {variant} {loss} s{seed}"
    _log(f"start {tag}")
    work = REGEN_CACHE.parent / "runs" / f"{tag.replace(' ', '-')}-{int(time.time())}"
    with sasrec_library_path() if args.library_kernels else contextlib.nullcontext():
        scorer = (cached_scorer(dataset_path, dataset, cfg, tag, kernels)
                  if cfg.runs_loss_filter(cfg.personalize) and rows is not None else None)
        outcome = train(dataset, rows, cfg, work, _progress(tag), scorer=scorer)
    report = outcome.report
    if variant == "original":
        keep_as_scorer(dataset_path, cfg, work, kernels)
    stopped = "early" if report["epochs_run"] < args.epochs else "capped"
    rec.update({
        "threads": torch.get_num_threads(),
        "stopped": stopped,
        "epochs": report["epochs_run"],
        "best_epoch": report["best_epoch"],
        "loss_scale": report.get("loss_scale"),  # the scale used ('auto' resolved)
        "forward_slices": cfg.forward_slices,  # exact (same gradients): not part of the arm
        "finetune": report.get("finetune"),  # finetune='original': both phases and which was kept
        "row_filter": report.get("row_filter"),  # what the row filter kept ('loss': and its scorer)
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": report["seconds"],
        "test": report["test"],
        "valid": report["valid"],
        "rows": report["dataset"]["training_rows"],
        "regeneration": None if regen_stats is None else {
            "folder": str(regen_folder.relative_to(BASE)),
            "timings": regen_stats.get("timings"),
            "redecoded_from": regen_stats.get("redecoded_from") and str(Path(regen_stats["redecoded_from"]).name),
            "shared_by_seeds": True,
            # where its regenerator was trained: a seed gives other rows on another CPU kernel path
            "environment": regenerator_environment(made_with),
        },
        "environment": report.get("environment"),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
    })
    if variant == "dr4sr+":
        rec["weights"] = {
            src: {k: w[k] for k in ("mean", "std", "min", "max", "positions", "weighted")}
            for src, w in report.get("weights", {}).items()
        }
        meta = report.get("personalizer", {}).get("meta", {})
        rec["personalizer_meta"] = {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}
    per_user = _per_user_path(rec)
    per_user.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(per_user, **{k: np.asarray(v, dtype=np.float32) for k, v in outcome.per_user.items()})
    rec["per_user"] = str(per_user.relative_to(BASE))
    rec["p_vs_original"] = p_vs_original(rec, records)
    if args.record:
        with open(JSONL, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, help="One dataset (or use --grid).")
    p.add_argument("--model", default="sasrec")
    p.add_argument("--variant", default="original", choices=VARIANTS)
    p.add_argument("--loss", default="bce", choices=LOSSES)
    p.add_argument("--seeds", default="2023", help="Comma-separated training seeds, e.g. 1,2,3.")
    p.add_argument("--grid", help='"DATASETS x MODELS x VARIANTS x LOSSES", each a comma-separated list.')
    p.add_argument("--ablation", default="none", choices=["none", "no_diversity", "patterns_only", "end_to_end"],
                   help="Paper Table 4: (A) no_diversity, (B) patterns_only, (C) end_to_end (DR4SR+ only).")
    p.add_argument("--profile", default="fixed", choices=["parity", "fixed"], help="Regenerator profile.")
    p.add_argument("--personalizer-profile", default="fixed", choices=["parity", "fixed"])
    p.add_argument("--regen-set", action="append", default=[], metavar="KEY=VALUE",
                   help="Regeneration setting (JSON value), e.g. --regen-set beta=3; repeatable.")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="Training setting (a TrainJobConfig field, JSON value) for every arm, e.g. "
                   "--train-set loss_scale=epoch; repeatable.")
    p.add_argument("--pers-set", action="append", default=[], metavar="KEY=VALUE",
                   help="DR4SR+ personalizer override (JSON value), e.g. --pers-set meta_lr=0.1; repeatable.")
    p.add_argument("--regenerator-epochs", type=int)
    p.add_argument("--pretrain-epochs", type=int)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--bucket-chunk", type=int, default=TrainJobConfig.model_fields["bucket_chunk"].default,
                   help="Trainer length bucketing in chunks of this many batches; 0 (the trainer's default) = "
                        "uniform shuffling, the reference's batching.")
    p.add_argument("--threads", type=int, default=None, help="torch threads for this process.")
    p.add_argument("--device", default="auto")
    p.add_argument("--tag", default=None, help="Label for an experiment arm (kept in the record).")
    p.add_argument("--library-kernels", action="store_true",
                   help="SASRec only: train with F.dropout and SDPA's attention dropout (the library path) instead "
                        "of the CPU dropout device, to check that device's quality; the tag defaults to "
                        "'library-kernels', so these runs form their own arm.")
    p.add_argument("--force", action="store_true", help="Run even when an identical run is recorded.")
    p.add_argument("--record", action="store_true", help="Append results to benchmarks/results/quality.jsonl.")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.grid:
        parts = [part.strip() for part in args.grid.split(" x ")]
        if len(parts) != 4:
            raise SystemExit("error: --grid needs four ' x '-separated lists: DATASETS x MODELS x VARIANTS x LOSSES")
        datasets, models_, variants, losses = ([v.strip() for v in part.split(",") if v.strip()] for part in parts)
        bad = [v for v in variants if v not in VARIANTS] + [v for v in losses if v not in LOSSES]
        if bad:
            raise SystemExit(f"error: unknown variant or loss in --grid: {bad}")
        cells = [(Path(d), m, v, lo) for d in datasets for lo in losses for m in models_ for v in variants]
    elif args.dataset:
        cells = [(args.dataset, args.model, args.variant, args.loss)]
    else:
        raise SystemExit("error: give --dataset or --grid")
    if args.library_kernels:
        others = sorted({m for _, m, _, _ in cells} - {"sasrec"})
        if others:
            raise SystemExit(f"error: --library-kernels swaps SASRec's dropout and attention; not for {others}")
        args.tag = args.tag or "library-kernels"
    for d, *_ in cells:
        if not d.exists():
            raise SystemExit(f"error: dataset {d} does not exist")
    cache: dict = {}
    # seed-major order: every arm of seed 1 lands (and can be paired) before seed 2 starts
    for seed in seeds:
        for d, m, v, lo in cells:
            run_one(args, d, m, v, lo, seed, cache)


if __name__ == "__main__":
    main()
