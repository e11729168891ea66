"""A comparison's report: runs of models x data variants x seeds, side by side.

The same document whether the runs were trained in one process
(:func:`models.pipeline.compare`) or as separate train jobs that a compare
job aggregates once they have all finished (``workers.tasks``): each run is a
dict of its test/valid metrics, and ``per_user`` holds its per-user test
NDCG@20, keyed by ``(model, variant, seed)``, for the paired tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.config import VARIANTS, CompareConfig, TrainJobConfig
from models.progress import Progress, ProgressEvent, no_progress

if TYPE_CHECKING:
    from models.data.preprocess import PreparedDataset
    from models.data.sequences import TrainRows
    from models.pipeline import TrainOutcome

PAIRED_METRIC = "ndcg@20"

RunKey = tuple[str, str, int]


def run_entry(model: str, variant: str, seed: int, report: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row of the comparison, from a train report (or the same fields)."""
    return {
        "model": model,
        "variant": variant,
        "seed": seed,
        "test": dict(report["test"]),
        "valid": dict(report["valid"]),
        "best_epoch": report["best_epoch"],
        "seconds": report["seconds"],
        "history": report.get("history", []),
        **({"row_filter": report["row_filter"]} if report.get("row_filter") else {}),
    }


def _significance(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from models.evaluation import paired_significance

    return paired_significance(a, b)


def with_significance(runs: list[dict[str, Any]], per_user: Mapping[RunKey, np.ndarray]) -> None:
    """Give each non-original run the paired tests of its per-user NDCG@20
    against the original-data run of the same model and seed (in place)."""
    for run in runs:
        if run["variant"] == "original":
            continue
        base = per_user.get((run["model"], "original", run["seed"]))
        mine = per_user.get((run["model"], run["variant"], run["seed"]))
        if base is not None and mine is not None:
            run["significance"] = _significance(mine, base)


def summarize(
    runs: list[dict[str, Any]],
    per_user: Mapping[RunKey, np.ndarray],
    models: Sequence[str],
    variants: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per model x variant: mean and sd over seeds of the test metrics,
    and the paired tests of its per-user NDCG@20 (averaged over the seeds both
    arms share) against the original's."""
    out = []
    for model in models:
        for variant in variants:
            mine = [r for r in runs if r["model"] == model and r["variant"] == variant]
            metrics = sorted(mine[0]["test"]) if mine else []
            row: dict[str, Any] = {
                "model": model,
                "variant": variant,
                "seeds": len(mine),
                "test_mean": {m: float(np.mean([r["test"][m] for r in mine])) for m in metrics},
                "test_sd": {
                    m: float(np.std([r["test"][m] for r in mine], ddof=1)) if len(mine) > 1 else 0.0
                    for m in metrics
                },
            }
            shared = sorted(
                r["seed"] for r in mine if (model, "original", r["seed"]) in per_user
                and (model, variant, r["seed"]) in per_user
            )
            if variant != "original" and shared:
                ours = np.mean([per_user[(model, variant, s)] for s in shared], axis=0)
                base = np.mean([per_user[(model, "original", s)] for s in shared], axis=0)
                row["significance"] = {**_significance(ours, base), "seeds": shared}
            out.append(row)
    return out


def compare_report(
    *,
    dataset_name: str,
    dataset_stats: Mapping[str, Any],
    protocol: Mapping[str, Any],
    parameters: Mapping[str, Any],
    models: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int],
    runs: list[dict[str, Any]],
    per_user: Mapping[RunKey, np.ndarray],
    weights: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The comparison document (``report.json``; ``models.reports`` renders it)."""
    with_significance(runs, per_user)
    return {
        "kind": "compare",
        "title": f"Original vs DR4SR vs DR4SR+ on {dataset_name}",
        "dataset": {"name": dataset_name, **dataset_stats},
        "protocol": {**protocol, "seeds": list(seeds)},
        "parameters": dict(parameters),
        "seeds": list(seeds),
        "runs": runs,
        "summary": summarize(runs, per_user, models, variants),
        "weights": dict(weights or {}),
        **dict(extra or {}),
    }


def compare(
    dataset: PreparedDataset,
    regenerated_rows: TrainRows | None,
    models: list[str] | tuple[str, ...] = ("sasrec",),
    variants: list[str] | tuple[str, ...] = VARIANTS,
    config: TrainJobConfig | None = None,
    out_dir: Path | str = "compare",
    progress: Progress = no_progress,
    seeds: list[int] | tuple[int, ...] | None = None,
) -> TrainOutcome:
    """The paper's Table 3 on the user's own data: each model on each variant
    and each seed (default: ``config.seed`` only), with paired significance
    (t-test and Wilcoxon on per-user NDCG@20) against the model's
    original-data run of the same seed. ``summary`` holds one row per model x
    variant: mean and sd of the test metrics over seeds and the paired tests
    on per-user NDCG@20 averaged over seeds."""
    from models.pipeline import (
        TrainOutcome,
        _atomic_dir,
        _composition_report,
        _protocol,
        _publish,
        _renamed,
        _run,
    )
    from models.reports import write_report
    from models.training_filter import Scorer

    config = config if config is not None else TrainJobConfig()
    chosen = CompareConfig(models=list(models), variants=list(variants),
                           seeds=list(seeds) if seeds is not None else [config.seed])
    models, variants, seeds = chosen.models, chosen.variants, chosen.seeds
    if any(v != "original" for v in variants) and regenerated_rows is None:
        raise ValueError("variants: 'dr4sr' and 'dr4sr+' need a regenerated dataset")

    for model in models:  # every arm's settings are valid before the first is trained
        for variant in variants:
            config.replace(model=model, personalize=variant == "dr4sr+")
    out_dir = Path(out_dir)
    split = dataset.split(config.max_len)
    runs: list[dict[str, Any]] = []
    per_user: dict[tuple[str, str, int], np.ndarray] = {}
    total = len(models) * len(variants) * len(seeds)
    weights: dict[str, Any] = {}
    step = 0
    for model in models:
        for seed in seeds:
            # the original arm first: the loss filter scores with it instead of training it again
            scorer: Scorer | None = None
            done: dict[str, dict[str, Any]] = {}
            for variant in sorted(variants, key=lambda v: v != "original"):
                label = f"{model}/{variant}" + (f"/seed {seed}" if len(seeds) > 1 else "")
                progress(ProgressEvent(stage="compare", done=step, total=total, message=label))
                step += 1
                cfg = config.replace(model=model, personalize=variant == "dr4sr+", seed=seed)
                rows = split.train if variant == "original" else regenerated_rows
                result = _run(dataset, split, rows, cfg, _renamed(progress, f"train {label}"), scorer=scorer)
                if variant == "original" and config.runs_loss_filter():
                    scorer = Scorer.of(result, **{"from": "the original arm of this comparison"})
                done[variant] = run_entry(model, variant, seed, {
                    "test": result.test_metrics, "valid": result.valid_metrics,
                    "best_epoch": result.best_epoch + 1, "seconds": round(result.seconds, 2),
                    "history": result.history, "row_filter": result.row_filter})
                per_user[(model, variant, seed)] = np.asarray(result.test_per_user[PAIRED_METRIC])
                if variant == "dr4sr+":
                    weights = result.weights
            runs.extend(done[v] for v in variants)  # in the order asked for
    progress(ProgressEvent(stage="compare", done=total, total=total))
    report = compare_report(
        dataset_name=dataset.name, dataset_stats=dataset.stats, protocol=_protocol(config, split),
        parameters=config.as_dict(), models=models, variants=variants, seeds=seeds, runs=runs,
        per_user=per_user, weights=weights, extra=_composition_report(regenerated_rows, split),
    )
    tmp = _atomic_dir(out_dir)
    try:
        write_report(tmp, report)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainOutcome(report=report, out_dir=out_dir)

