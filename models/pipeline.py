"""The stages composed: ``regenerate``, ``train`` and ``compare``.

Every function takes a config (a :mod:`models.config` model), an output folder and a progress
callback, writes its artifacts into the folder only once the work is done
(atomically, file by file), and returns a small result object. Nothing here
prints, and nothing here knows about HTTP, Celery or the database.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.config import (
    MODEL_NAMES,
    VARIANTS,
    RegenerationConfig,
    TrainConfig,
    TrainJobConfig,
)
from models.data.preprocess import PreparedDataset
from models.data.sequences import RowSource, Split, TrainRows, load_rows, save_rows
from models.environment import fingerprint
from models.progress import Progress, ProgressEvent, no_progress

if TYPE_CHECKING:  # torch stays unimported until a stage runs
    from models.training_filter import Scorer

__all__ = [
    "MODEL_NAMES",
    "VARIANTS",
    "RegenerationConfig",
    "RegenerationOutcome",
    "TrainJobConfig",
    "TrainOutcome",
    "compare",
    "load_rows",
    "regenerate",
    "train",
]

@dataclass
class RegenerationOutcome:
    rows: TrainRows
    stats: dict[str, Any]
    out_dir: Path


def _stage(progress: Progress, stage: str, message: str) -> None:
    progress(ProgressEvent(stage=stage, done=0, total=None, message=message))


def _atomic_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished temporary folder into place (replacing an earlier attempt's)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


# ---------------------------------------------------------------------------
# regeneration (P1-P4)
# ---------------------------------------------------------------------------
def _pretrain_item_table(split: Split, num_items: int, config: RegenerationConfig, progress: Progress):
    """SASRec on the original rows; its item table seeds the regenerator (spec §3)."""
    from models.training import train_model

    if config.pretrain_epochs == 0:
        return None, {}
    tc = TrainConfig(
        model="sasrec",
        epochs=config.pretrain_epochs,
        patience=config.pretrain_patience,
        device=config.device,
        max_len=config.max_len,
        world_size=config.world_size,
        valid_sample=config.valid_sample,
        # the pre-training keeps length bucketing: every recorded regeneration was made with it,
        # and uniform batches have been checked for the target model only (TrainConfig.bucket_chunk)
        bucket_chunk=32,
        forward_slices=1,  # bucketed batches have little padding to save; keeps the recorded runs' draws
        loss="bce",  # the paper's pre-training, and every recorded regeneration's (not the target model's default)
    )
    result = train_model(split.train, split.valid, split.test, num_items, tc, _renamed(progress, "pretrain"))
    table = result.model.item_embeddings().detach().cpu()
    summary = {
        "best_epoch": result.best_epoch + 1,
        "epochs_run": result.epochs_run,
        "loss_scale": result.loss_scale,
        "valid": result.valid_metrics,
        "test": result.test_metrics,
        "seconds": round(result.seconds, 2),
    }
    return table, summary


def _renamed(progress: Progress, stage: str) -> Progress:
    """Report a sub-stage's events under ``stage`` (the trainer calls its own "train"/"valid")."""

    def forward(event: ProgressEvent) -> None:
        progress(dataclasses.replace(event, stage=stage if event.stage == "train" else f"{stage}:{event.stage}"))

    return forward


def regenerate(
    dataset: PreparedDataset,
    config: RegenerationConfig | None = None,
    out_dir: Path | str = "regenerated",
    progress: Progress = no_progress,
) -> RegenerationOutcome:
    """Mine, pair, pre-train, train the regenerator, decode and assemble (spec P1-P4).

    Writes into ``out_dir`` (only once everything succeeded): ``regenerated.npz``
    (the rows, with their source column), ``stats.json``, ``config.json``,
    ``patterns.npz`` and ``regenerator/`` (weights + config).
    """
    from models.patterns import build_pairs, describe, mine_patterns, pattern_budget, pattern_rows

    config = config if config is not None else RegenerationConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)

    split = dataset.split(config.max_len)
    t0 = time.perf_counter()
    _stage(progress, "mine", "mining patterns")
    adaptive = config.beta is None
    budget = pattern_budget(len(split.train), config.max_pattern_ratio) if adaptive else None
    patterns = mine_patterns(split.mining, config.alpha, config.beta or 2, progress, max_patterns=budget)
    timed("mine_s", t0)
    if len(patterns) == 0:
        if adaptive and patterns.min_support > 2:
            raise ValueError(
                f"no pattern fits the budget of {budget:,} pattern rows (max_pattern_ratio="
                f"{config.max_pattern_ratio} x {len(split.train):,} original rows) within alpha={config.alpha}: "
                "raise max_pattern_ratio or set beta"
            )
        raise ValueError(
            f"no pattern has support >= beta={patterns.min_support} within alpha={config.alpha}: "
            "lower beta, raise alpha, or upload more interactions"
        )
    t0 = time.perf_counter()
    pairs = build_pairs(split.pair_source, patterns, config.max_pairs, config.pair_match, config.alpha, config.seed, progress)
    timed("pairs_s", t0)
    pat_rows = pattern_rows(patterns)
    reg_cfg = config.regenerator_config()
    stats: dict[str, Any] = {"patterns": describe(patterns, pairs, config.max_pairs)}
    stats["patterns"].update(
        beta=int(patterns.min_support),
        beta_rule="adaptive" if adaptive else "set",
        max_patterns=budget,
        max_pattern_ratio=config.max_pattern_ratio if adaptive else None,
    )
    regenerator = None

    if config.ablation == "patterns_only":
        # Ablation (B): the mined patterns themselves are the regenerated data.
        regen_rows = TrainRows.build(patterns.seqs, RowSource.REGENERATED)
        rows = split.train.concat(regen_rows)
        stats["regenerated"] = {"rows": rows.counts(), "ablation": "patterns_only"}
    else:
        from models.decoding import decode
        from models.regenerated import assemble
        from models.regenerator import train_regenerator

        if len(pairs) == 0:
            raise ValueError("no (sequence, pattern) pair could be built: the regenerator has nothing to learn from")
        t0 = time.perf_counter()
        table, stats["pretrain"] = _pretrain_item_table(split, dataset.num_items, config, progress)
        timed("pretrain_s", t0)
        src, tgt = pairs.materialise(split.pair_source, patterns)
        t0 = time.perf_counter()
        regenerator = train_regenerator(src, tgt, dataset.num_items, reg_cfg, item_embeddings=table, progress=progress)
        timed("regenerator_s", t0)
        t0 = time.perf_counter()
        decoded = decode(regenerator, split.pair_source, reg_cfg, progress=progress)
        timed("decode_s", t0)
        assembled = assemble(split.train, pat_rows, decoded, reg_cfg)
        rows = assembled.rows
        stats["regenerated"] = assembled.stats

    timings["total_s"] = round(time.perf_counter() - started, 3)
    stats["timings"] = timings
    _summarise(stats, rows, split, dataset, beta_set=not adaptive, patterns_only=config.ablation == "patterns_only")
    _write_regeneration(out_dir, rows, pat_rows, stats, config, reg_cfg, regenerator, dataset.name)
    return RegenerationOutcome(rows=rows, stats=stats, out_dir=out_dir)


def _summarise(stats: dict[str, Any], rows: TrainRows, split: Split, dataset: PreparedDataset,
               beta_set: bool, patterns_only: bool) -> None:
    """The dataset, row counts, composition and its warnings, into ``stats``."""
    from models.composition import composition, composition_warnings

    stats["dataset"] = dict(dataset.stats)
    stats["rows"] = rows.counts()
    stats["composition"] = composition(rows, len(split.train))
    stats["warnings"] = composition_warnings(stats["composition"], beta_set=beta_set, patterns_only=patterns_only)


def _write_regeneration(out_dir: Path, rows: TrainRows, pat_rows: TrainRows, stats: dict[str, Any],
                        config: RegenerationConfig, reg_cfg, regenerator, name: str,
                        trained_on: dict[str, Any] | None = None) -> None:
    """Publish a regeneration folder atomically (everything or nothing).
    ``trained_on``: where a decoded-again folder's regenerator was trained."""
    tmp = _atomic_dir(out_dir)
    try:
        save_rows(tmp / "regenerated.npz", rows)
        save_rows(tmp / "patterns.npz", pat_rows)
        _write_json(tmp / "stats.json", stats)
        from models.reports import render_regeneration_html

        (tmp / "report.html").write_text(render_regeneration_html(stats, f"DR4SR regeneration of {name}"))
        _write_json(
            tmp / "config.json",
            {
                "regeneration": config.model_dump(mode="json"), "regenerator": reg_cfg.to_dict(),
                "code_version": _code_version(),
                # a seed reproduces these rows bit for bit only on the same software and CPU kernel path
                "environment": fingerprint(config.device),
                **({"regenerator_environment": trained_on} if trained_on else {}),
            },
        )
        if regenerator is not None:
            from models.regenerator import save_regenerator

            save_regenerator(regenerator, tmp / "regenerator")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: Regenerator settings that act only after training (decoding and assembly):
#: a trained regenerator can be decoded again under other values of these.
DECODE_SETTINGS = frozenset(
    {"max_decode_len", "restrictive_steps", "decode_policy", "gamma", "emit_pad", "drop_last_token",
     "original_rows", "order", "copy_order", "device"}
)


def redecode_mismatch(made_with: dict[str, Any], config: RegenerationConfig) -> str | None:
    """Why the regeneration folder whose ``config.json`` is ``made_with`` cannot
    be decoded again under ``config`` (None when it can): every setting that
    shapes mining, pairing, pre-training or the regenerator's training must be
    equal; only :data:`DECODE_SETTINGS` may differ."""
    old_reg = dict(made_with.get("regenerator") or {})
    new_reg = config.regenerator_config().to_dict()
    differ = sorted(k for k in set(old_reg) | set(new_reg)
                    if old_reg.get(k) != new_reg.get(k) and k not in DECODE_SETTINGS)
    if differ:
        return f"the regenerator was trained with other {', '.join(differ)}"
    old_top = {k: v for k, v in (made_with.get("regeneration") or {}).items() if k not in ("regenerator", "device", "profile")}
    new_top = {k: v for k, v in config.model_dump(mode="json").items() if k not in ("regenerator", "device", "profile")}
    differ = sorted(k for k in set(old_top) | set(new_top) if old_top.get(k) != new_top.get(k))
    if differ:
        return f"the regeneration was made with other {', '.join(differ)}"
    if config.ablation == "patterns_only":
        return "a patterns_only regeneration decodes nothing"
    return None


def redecode(
    dataset: PreparedDataset,
    config: RegenerationConfig,
    from_dir: Path | str,
    out_dir: Path | str,
    progress: Progress = no_progress,
) -> RegenerationOutcome:
    """Decode and assemble again with an earlier regeneration's trained
    regenerator and patterns, under ``config``'s decoding and assembly settings
    (:data:`DECODE_SETTINGS`); minutes instead of the regenerator's training.
    Everything else must equal what ``from_dir`` was made with, on the same
    dataset, or :class:`ValueError` says what differs. Writes a complete
    regeneration folder into ``out_dir``; its ``stats.json`` names ``from_dir``."""
    from models.decoding import decode
    from models.regenerated import assemble
    from models.regenerator import load_regenerator

    from_dir, out_dir = Path(from_dir), Path(out_dir)
    made_with = json.loads((from_dir / "config.json").read_text())
    why = redecode_mismatch(made_with, config)
    if why:
        raise ValueError(f"cannot decode {from_dir} again: {why}")
    old_stats = json.loads((from_dir / "stats.json").read_text())
    same_data = ("users", "items", "interactions")
    made_from = old_stats.get("dataset", {})
    if any(made_from.get(k) != dataset.stats.get(k) for k in same_data):
        shape = ", ".join(f"{k} {made_from.get(k)}" for k in same_data)
        raise ValueError(f"cannot decode {from_dir} again: it was made from another dataset ({shape})")
    split = dataset.split(config.max_len)
    pat_rows = load_rows(from_dir / "patterns.npz")
    reg_cfg = config.regenerator_config()
    device = None if reg_cfg.device == "auto" else reg_cfg.device
    regenerator = load_regenerator(from_dir / "regenerator", device=device)
    t0 = time.perf_counter()
    decoded = decode(regenerator, split.pair_source, reg_cfg, progress=progress)
    decode_s = round(time.perf_counter() - t0, 3)
    assembled = assemble(split.train, pat_rows, decoded, reg_cfg)
    rows = assembled.rows
    stats: dict[str, Any] = {k: old_stats[k] for k in ("patterns", "pretrain") if k in old_stats}
    stats["regenerated"] = assembled.stats
    stats["timings"] = {**old_stats.get("timings", {}), "decode_s": decode_s}
    stats["redecoded_from"] = str(from_dir)
    _summarise(stats, rows, split, dataset, beta_set=config.beta is not None, patterns_only=False)
    _write_regeneration(out_dir, rows, pat_rows, stats, config, reg_cfg, regenerator, dataset.name,
                        regenerator_environment(made_with))
    return RegenerationOutcome(rows=rows, stats=stats, out_dir=out_dir)


def regenerator_environment(made_with: dict[str, Any]) -> dict[str, Any] | None:
    """Where the regenerator of the folder whose ``config.json`` is ``made_with``
    was trained (a decoded-again folder keeps its source's)."""
    return made_with.get("regenerator_environment") or made_with.get("environment")


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dr4sr")
    except PackageNotFoundError:  # running from a source tree without install
        return "unknown"


# ---------------------------------------------------------------------------
# target-model training (P5a / P5b) and comparison
# ---------------------------------------------------------------------------
@dataclass
class TrainOutcome:
    report: dict[str, Any]
    out_dir: Path
    per_user: dict[str, np.ndarray] = field(default_factory=dict)


def _protocol(cfg: TrainJobConfig, split: Split) -> dict[str, Any]:
    return {
        "split": "leave-one-out inside the last max_len items (valid = second last, test = last)",
        "max_len": cfg.max_len,
        "ranking": "full ranking over all items",
        "masking": "pad id and every item of the input history masked",
        "loss": cfg.loss,
        "negatives": {
            "bce": "1 uniform negative per target position",
            "ce": "full softmax",
            "sampled_ce": f"softmax over {cfg.num_negatives} uniform negatives shared by the batch",
        }[cfg.loss],
        "early_stopping": f"validation NDCG@20, patience {cfg.patience}",
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "test_users": len(split.test),
    }


def _run(dataset, split: Split, rows: TrainRows, cfg: TrainJobConfig, progress: Progress,
         checkpoint_dir: Path | None = None, scorer: Scorer | None = None):
    """Train (plain or DR4SR+); with ``checkpoint_dir`` the trainer checkpoints
    every epoch there and resumes from a checkpoint it finds (a retried job).
    ``scorer``: the original arm, for the loss filter to score with."""
    from models.training import train_model

    resume = checkpoint_dir is not None
    if cfg.personalize:
        from models.personalizer import train_personalized

        return train_personalized(
            rows, split.valid, split.test, dataset.num_items, cfg.train_config(), cfg.personalizer_config(),
            progress, checkpoint_dir=checkpoint_dir, resume=resume,
        )
    return train_model(rows, split.valid, split.test, dataset.num_items, cfg.train_config(), progress,
                       checkpoint_dir=checkpoint_dir, resume=resume, scorer=scorer)


def _variant_name(rows: TrainRows | None, personalize: bool) -> str:
    if personalize:
        return "dr4sr+"
    if rows is None or not (rows.source != RowSource.ORIGINAL).any():
        return "original"
    return "dr4sr"


def train(
    dataset: PreparedDataset,
    rows: TrainRows | None = None,
    config: TrainJobConfig | None = None,
    out_dir: Path | str = "trained",
    progress: Progress = no_progress,
    checkpoint_dir: Path | None = None,
    scorer: Scorer | None = None,
) -> TrainOutcome:
    """Train one target model on the original (``rows=None``) or regenerated rows.

    With ``checkpoint_dir``, training state is saved there every epoch and an
    existing checkpoint is resumed (how a worker continues a crashed job).
    ``scorer``: where the loss filter runs, the original arm of the same model,
    settings and seed, reused instead of training one (a compare job's).

    Writes ``model.safetensors`` + ``config.json`` (the checkpoint),
    ``report.json`` / ``report.html``, ``topk.parquet`` (top-k per test user in
    original ids) and ``per_user.npz`` (per-user test metrics for paired tests).
    """
    from models.evaluation import topk
    from models.reports import write_report
    from models.training import save_checkpoint

    config = config if config is not None else TrainJobConfig()
    out_dir = Path(out_dir)
    split = dataset.split(config.max_len)
    train_rows = split.train if rows is None else rows
    result = _run(dataset, split, train_rows, config, progress, checkpoint_dir, scorer)
    variant = _variant_name(rows, config.personalize)
    report = {
        "kind": "train",
        "title": f"{config.model} ({variant}) on {dataset.name}",
        "model": config.model,
        "variant": variant,
        "dataset": {"name": dataset.name, **dataset.stats, "training_rows": train_rows.counts()},
        "protocol": _protocol(config, split),
        "parameters": config.as_dict(),
        "best_epoch": result.best_epoch + 1,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "loss_scale": result.loss_scale,
        "seconds": round(result.seconds, 2),
        "valid": result.valid_metrics,
        "test": result.test_metrics,
        "history": result.history,
        "environment": fingerprint(config.device),  # bit-identical reruns need the same (models/environment.py)
    }
    if result.finetune is not None:
        report["finetune"] = result.finetune
    if result.row_filter is not None:
        report["row_filter"] = result.row_filter
    if config.personalize:
        report["weights"] = result.weights
        report["personalizer"] = {"config": result.personalizer_config, "meta": result.meta}
    report.update(_composition_report(rows, split))

    tmp = _atomic_dir(out_dir)
    try:
        save_checkpoint(result.model, tmp)  # model.safetensors + config.json
        top = topk(result.model, split.test, k=min(config.topk, dataset.num_items))
        _write_topk(tmp / "topk.parquet", dataset, split, top)
        np.savez(tmp / "per_user.npz", **{k: np.asarray(v) for k, v in result.test_per_user.items()})
        write_report(tmp, report)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainOutcome(report=report, out_dir=out_dir, per_user=result.test_per_user)


def _composition_report(rows: TrainRows | None, split: Split) -> dict[str, Any]:
    """The regenerated rows' mix and its warnings (issue 14), for a report on them."""
    from models.composition import composition, composition_warnings

    if rows is None or not (rows.source != RowSource.ORIGINAL).any():
        return {}
    comp = composition(rows, len(split.train))
    return {"composition": comp, "warnings": composition_warnings(comp)}


def _write_topk(path: Path, dataset: PreparedDataset, split: Split, top: np.ndarray) -> None:
    import polars as pl

    users = dataset.user_ids[split.test.user]
    k = top.shape[1]
    frame = pl.DataFrame(
        {
            "user_id": np.repeat(users, k).astype(str),
            "rank": np.tile(np.arange(1, k + 1), len(users)),
            "item_id": dataset.item_ids[top.reshape(-1)].astype(str),
        }
    ).filter(pl.col("item_id") != "")
    frame.write_parquet(path)


from models.comparison import compare  # noqa: E402  (the comparison of runs lives with its report)
