"""``dr4sr regenerate``, ``dr4sr train``, ``dr4sr evaluate`` and ``dr4sr compare``.

Each command ingests a log (any supported format) or a folder written by
``dr4sr prepare --out``, runs one :mod:`models.pipeline` stage with progress
bars on a terminal, and writes its output folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from app.tty import TerminalProgress
from models.config import RegenerationConfig as R
from models.config import TrainJobConfig as T

FORMATS_HELP = "Input format (csv, tsv, jsonl, parquet, inter, txt; default: detected)."


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _load_dataset(path: Path, fmt: str | None, user_core: int, item_core: int, max_len: int):
    from models.data.errors import DataError
    from models.data.preprocess import PreparedDataset, prepare

    try:
        if path.is_dir():
            return PreparedDataset.load(path)
        return prepare(path, format=fmt, user_core=user_core, item_core=item_core, max_len=max_len)
    except (DataError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None


def _params(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` overrides; values are parsed as JSON when they parse,
    and dotted keys reach nested configs (``--set regenerator.d_model=32``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise _fail(f"--set expects key=value, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _fail(f"--set {key}: '{part}' was already set to a value")
            node = child
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _config(cls, options: dict[str, Any], sets: list[str]):
    """A :mod:`models.config` model from the command's options (those given)
    and ``--set`` pairs, or exit with the message the API would give."""
    from pydantic import ValidationError

    from models.config import describe_error

    values = _merge({k: v for k, v in options.items() if v is not None}, _params(sets))
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise _fail(describe_error(exc)[1]) from None


def _default(cls, name: str) -> str:
    return f" Default: {cls.model_fields[name].default}."


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    typer.echo(title)
    for name in sorted(metrics):
        typer.echo(f"  {name:>10}: {metrics[name]:.4f}")


def register(app: typer.Typer) -> None:
    @app.command("regenerate")
    def regenerate_cmd(
        file: Path = typer.Argument(..., help="Interaction log, or a folder from `dr4sr prepare --out`."),
        out: Path = typer.Option(Path("regenerated"), "--out", help="Output folder."),
        fmt: str | None = typer.Option(None, "--format", help=FORMATS_HELP),
        profile: str | None = typer.Option(None, help="fixed (quirks corrected) or parity (released code)." + _default(R, "profile")),
        epochs: int | None = typer.Option(None, help="Regenerator training epochs." + _default(R, "regenerator_epochs")),
        pretrain_epochs: int | None = typer.Option(None, help="SASRec item-embedding pre-training epochs (early-stopped)." + _default(R, "pretrain_epochs")),
        k: int | None = typer.Option(None, "--k", help="Number of memories K (diversity promoter)." + _default(R, "k_memories")),
        alpha: int | None = typer.Option(None, help="Mining window (Seq2Pat max_span)." + _default(R, "alpha")),
        beta: int | None = typer.Option(
            None, help="Minimum pattern support. Default: adaptive, the smallest beta >= 2 keeping pattern rows "
            "within max_pattern_ratio x the original rows (--set max_pattern_ratio=2.0)."),
        seed: int | None = typer.Option(None, help=_default(R, "seed")),
        device: str | None = typer.Option(None, help="auto, cpu or cuda." + _default(R, "device")),
        user_core: int = typer.Option(5),
        item_core: int = typer.Option(5),
        max_len: int | None = typer.Option(None, help="Window of the last max_len interactions per user." + _default(R, "max_len")),
        export: list[str] = typer.Option([], help="Also export the rows: parquet, jsonl, csv, inter or txt."),
        set_: list[str] = typer.Option([], "--set", help="Any RegenerationConfig field, key=value (JSON; dotted keys for nested ones, e.g. regenerator.d_model=32)."),
        from_: Path | None = typer.Option(
            None, "--from",
            help="An earlier regeneration folder of the same log: decode its trained regenerator again instead of "
            "training one, with its settings and the options given here; only decoding and assembly settings "
            "(e.g. --set regenerator.order=source) may differ."),
    ) -> None:
        """Regenerate a training dataset with DR4SR (mine, pair, pre-train, train, decode, assemble)."""
        from models.data.export import write_sequences
        from models.pipeline import redecode, regenerate

        options = dict(
            profile=profile, regenerator_epochs=epochs, pretrain_epochs=pretrain_epochs, k_memories=k,
            alpha=alpha, beta=beta, seed=seed, device=device, max_len=max_len,
        )
        if from_ is not None:
            made = from_ / "config.json"
            if not made.exists() or not (from_ / "regenerator").is_dir():
                raise _fail(f"--from {from_}: not a regeneration folder with a trained regenerator")
            if out.resolve() == from_.resolve():
                raise _fail("--out must differ from --from: the earlier regeneration is kept as it is")
            base = json.loads(made.read_text())["regeneration"]
            options = _merge(base, {k: v for k, v in options.items() if v is not None})
        config = _config(R, options, set_)
        dataset = _load_dataset(file, fmt, user_core, item_core, config.max_len)
        with TerminalProgress() as progress:
            try:
                if from_ is not None:
                    outcome = redecode(dataset, config, from_, out, progress)
                else:
                    outcome = regenerate(dataset, config, out, progress)
            except ValueError as exc:
                raise _fail(str(exc)) from None
        exported = outcome.rows.without_pad() if export else None  # Q12 pad holes have no original id
        for fmt_name in export:
            path = write_sequences(out / f"regenerated.{fmt_name}", exported.seqs, dataset, fmt_name,
                                   source=exported.source, user=exported.user)
            typer.echo(f"exported {path}")
        from models.composition import format_warnings

        comp = outcome.stats.get("composition", {})
        mined = outcome.stats.get("patterns", {})
        for line in format_warnings(outcome.stats.get("warnings", [])):
            typer.echo(line, err=True)
        typer.echo(json.dumps({"out": str(out), "rows": outcome.rows.counts(),
                               "beta": mined.get("beta"), "beta_rule": mined.get("beta_rule"),
                               "pattern_ratio": comp.get("pattern_ratio"),
                               "regenerated_ratio": comp.get("regenerated_ratio"),
                               "warnings": outcome.stats.get("warnings", []),
                               "timings": outcome.stats.get("timings", {})}, indent=2))

    @app.command("train")
    def train_cmd(
        file: Path = typer.Argument(..., help="Interaction log, or a folder from `dr4sr prepare --out`."),
        out: Path = typer.Option(Path("trained"), "--out", help="Report and checkpoint folder."),
        model: str | None = typer.Option(None, help="sasrec, gru4rec, fmlp, gnn or cl4srec." + _default(T, "model")),
        regenerated: Path | None = typer.Option(None, help="A `dr4sr regenerate` folder: train on its rows."),
        personalize: bool = typer.Option(False, help="DR4SR+: wrap the model in the personalizer."),
        epochs: int | None = typer.Option(None, help="Maximum epochs (early stopping on validation NDCG@20)." + _default(T, "epochs")),
        patience: int | None = typer.Option(None, help=_default(T, "patience")),
        seed: int | None = typer.Option(None, help=_default(T, "seed")),
        device: str | None = typer.Option(None, help="auto, cpu or cuda." + _default(T, "device")),
        fmt: str | None = typer.Option(None, "--format", help=FORMATS_HELP),
        user_core: int = typer.Option(5),
        item_core: int = typer.Option(5),
        max_len: int = typer.Option(T.model_fields["max_len"].default),
        set_: list[str] = typer.Option([], "--set", help="Any TrainJobConfig field, key=value (JSON; dotted keys for nested ones, e.g. personalizer.profile=fixed)."),
    ) -> None:
        """Train and evaluate a target recommender; writes report.json/report.html and the checkpoint."""
        from models.pipeline import load_rows, train

        options = dict(model=model, personalize=personalize or None, epochs=epochs, patience=patience, seed=seed,
                       device=device, max_len=max_len)
        config = _config(T, options, set_)
        dataset = _load_dataset(file, fmt, user_core, item_core, config.max_len)
        from models.personalizer.errors import PersonalizerConfigError

        rows = load_rows(regenerated / "regenerated.npz") if regenerated is not None else None
        with TerminalProgress() as progress:
            try:
                outcome = train(dataset, rows, config, out, progress)
            except PersonalizerConfigError as exc:  # e.g. DR4SR+ with no row to re-weight
                raise _fail(str(exc)) from None
        _print_metrics(f"{config.model} ({outcome.report['variant']}) test metrics:", outcome.report["test"])
        from models.composition import format_warnings

        for line in format_warnings(outcome.report.get("warnings", [])):
            typer.echo(line, err=True)
        typer.echo(f"report: {out / 'report.html'}")

    @app.command("evaluate")
    def evaluate_cmd(
        checkpoint: Path = typer.Argument(..., help="A `dr4sr train` folder (or its model.safetensors)."),
        file: Path = typer.Argument(..., help="The interaction log (or prepared folder) it was trained on."),
        out: Path = typer.Option(Path("evaluation"), "--out", help="Report folder."),
        split: str = typer.Option("test", help="test or valid."),
        fmt: str | None = typer.Option(None, "--format", help=FORMATS_HELP),
        user_core: int = typer.Option(5),
        item_core: int = typer.Option(5),
        max_len: int = typer.Option(50),
    ) -> None:
        """Full-ranking evaluation of a saved checkpoint; writes report.json/report.html."""
        from models.evaluation import evaluate
        from models.reports import write_report
        from models.training import load_model

        if split not in ("test", "valid"):
            raise _fail("--split must be 'test' or 'valid'")
        dataset = _load_dataset(file, fmt, user_core, item_core, max_len)
        try:
            model = load_model(checkpoint.parent if checkpoint.is_file() else checkpoint)
        except (OSError, ValueError, RuntimeError) as exc:
            raise _fail(f"cannot load checkpoint {checkpoint}: {exc}") from None
        if model.num_items != dataset.num_items:
            raise _fail(f"checkpoint has {model.num_items} items but the dataset has {dataset.num_items}")
        rows = getattr(dataset.split(max_len), split)
        result = evaluate(model, rows)
        name = type(model).__name__.lower()
        report = {"kind": "evaluate", "title": f"{name} on {dataset.name} ({split})", "model": name,
                  "variant": "checkpoint", "dataset": {"name": dataset.name, **dataset.stats},
                  "protocol": {"ranking": "full ranking over all items", "split": split,
                               "masking": "pad id and input history masked"},
                  "test": result.metrics}
        write_report(out, report)
        _print_metrics(f"{name} {split} metrics:", result.metrics)
        typer.echo(f"report: {out / 'report.html'}")

    @app.command("compare")
    def compare_cmd(
        file: Path = typer.Argument(..., help="Interaction log, or a folder from `dr4sr prepare --out`."),
        regenerated: Path = typer.Option(..., help="A `dr4sr regenerate` folder."),
        out: Path = typer.Option(Path("compare"), "--out"),
        models: str = typer.Option("sasrec", help="Comma-separated models."),
        variants: str = typer.Option("original,dr4sr,dr4sr+", help="Comma-separated variants."),
        seeds: str | None = typer.Option(None, help="Comma-separated training seeds (mean and sd over them). Default: the seed of --set seed (2023)."),
        epochs: int | None = typer.Option(None, help=_default(T, "epochs")),
        patience: int | None = typer.Option(None, help=_default(T, "patience")),
        device: str | None = typer.Option(None, help=_default(T, "device")),
        fmt: str | None = typer.Option(None, "--format", help=FORMATS_HELP),
        max_len: int = typer.Option(T.model_fields["max_len"].default),
        set_: list[str] = typer.Option([], "--set", help="Any TrainJobConfig field, key=value (JSON; dotted keys for nested ones)."),
    ) -> None:
        """Original vs DR4SR vs DR4SR+ for each model, with paired significance (paper Table 3)."""
        from models.config import CompareConfig
        from models.pipeline import compare, load_rows

        config = _config(T, dict(epochs=epochs, patience=patience, device=device, max_len=max_len), set_)
        seed_list = None
        if seeds is not None:
            try:
                seed_list = [int(x) for x in seeds.split(",") if x.strip()]
            except ValueError:
                raise _fail(f"--seeds expects comma-separated integers, got {seeds!r}") from None
        chosen = _config(CompareConfig, {"models": [m.strip() for m in models.split(",") if m.strip()],
                                         "variants": [v.strip() for v in variants.split(",") if v.strip()],
                                         "seeds": seed_list or [config.seed]}, [])
        dataset = _load_dataset(file, fmt, 5, 5, config.max_len)
        try:
            with TerminalProgress() as progress:
                outcome = compare(dataset, load_rows(regenerated / "regenerated.npz"),
                                  chosen.models, chosen.variants, config, out, progress, seeds=chosen.seeds)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        for row in outcome.report["summary"]:
            sig = row.get("significance", {})
            p = f"  p(t)={sig['t_p']:.3g}" if "t_p" in sig else ""
            mean, sd = row["test_mean"], row["test_sd"]
            spread = f" ± {sd['ndcg@20']:.4f}" if row["seeds"] > 1 else ""
            typer.echo(f"{row['model']:>8} {row['variant']:>8}  NDCG@20 {mean['ndcg@20']:.4f}{spread}"
                       f"  Recall@20 {mean['recall@20']:.4f}{p}")
        typer.echo(f"report: {out / 'report.html'}")
