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
    """``--set key=value`` overrides; values are parsed as JSON when they parse."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


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
        profile: str = typer.Option("fixed", help="fixed (quirks corrected, the default) or parity (released code)."),
        epochs: int = typer.Option(40, help="Regenerator training epochs."),
        pretrain_epochs: int = typer.Option(200, help="SASRec item-embedding pre-training epochs (early-stopped)."),
        k: int = typer.Option(5, "--k", help="Number of memories K (diversity promoter)."),
        alpha: int = typer.Option(5, help="Mining window (Seq2Pat max_span)."),
        beta: int = typer.Option(2, help="Minimum pattern support."),
        seed: int = typer.Option(2024),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        user_core: int = typer.Option(5),
        item_core: int = typer.Option(5),
        max_len: int = typer.Option(50),
        export: list[str] = typer.Option([], help="Also export the rows: parquet, jsonl, csv, inter or txt."),
        set_: list[str] = typer.Option([], "--set", help="Extra RegenerationConfig field, key=value (JSON)."),
    ) -> None:
        """Regenerate a training dataset with DR4SR (mine, pair, pre-train, train, decode, assemble)."""
        from models.data.export import write_sequences
        from models.pipeline import RegenerationConfig, regenerate

        dataset = _load_dataset(file, fmt, user_core, item_core, max_len)
        values = dict(
            profile=profile, regenerator_epochs=epochs, pretrain_epochs=pretrain_epochs, k_memories=k,
            alpha=alpha, beta=beta, seed=seed, device=device, max_len=max_len,
        )
        values.update(_params(set_))
        try:
            config = RegenerationConfig.from_dict(values)
        except (ValueError, TypeError) as exc:
            raise _fail(str(exc)) from None
        with TerminalProgress() as progress:
            try:
                outcome = regenerate(dataset, config, out, progress)
            except ValueError as exc:
                raise _fail(str(exc)) from None
        exported = outcome.rows.without_pad() if export else None  # Q12 pad holes have no original id
        for fmt_name in export:
            path = write_sequences(out / f"regenerated.{fmt_name}", exported.seqs, dataset, fmt_name,
                                   source=exported.source, user=exported.user)
            typer.echo(f"exported {path}")
        typer.echo(json.dumps({"out": str(out), "rows": outcome.rows.counts(),
                               "timings": outcome.stats.get("timings", {})}, indent=2))

    @app.command("train")
    def train_cmd(
        file: Path = typer.Argument(..., help="Interaction log, or a folder from `dr4sr prepare --out`."),
        out: Path = typer.Option(Path("trained"), "--out", help="Report and checkpoint folder."),
        model: str = typer.Option("sasrec", help="sasrec, gru4rec, fmlp, gnn or cl4srec."),
        regenerated: Path | None = typer.Option(None, help="A `dr4sr regenerate` folder: train on its rows."),
        personalize: bool = typer.Option(False, help="DR4SR+: wrap the model in the personalizer."),
        epochs: int = typer.Option(1000, help="Maximum epochs (early stopping on validation NDCG@20)."),
        patience: int = typer.Option(20),
        seed: int = typer.Option(2023),
        device: str = typer.Option("auto"),
        fmt: str | None = typer.Option(None, "--format", help=FORMATS_HELP),
        user_core: int = typer.Option(5),
        item_core: int = typer.Option(5),
        max_len: int = typer.Option(50),
        set_: list[str] = typer.Option([], "--set", help="Extra TrainJobConfig field, key=value (JSON)."),
    ) -> None:
        """Train and evaluate a target recommender; writes report.json/report.html and the checkpoint."""
        from models.pipeline import TrainJobConfig, load_rows, train

        dataset = _load_dataset(file, fmt, user_core, item_core, max_len)
        rows = load_rows(regenerated / "regenerated.npz") if regenerated is not None else None
        values = dict(model=model, personalize=personalize, epochs=epochs, patience=patience, seed=seed,
                      device=device, max_len=max_len)
        values.update(_params(set_))
        try:
            config = TrainJobConfig.from_dict(values)
        except (ValueError, TypeError) as exc:
            raise _fail(str(exc)) from None
        with TerminalProgress() as progress:
            outcome = train(dataset, rows, config, out, progress)
        _print_metrics(f"{model} ({outcome.report['variant']}) test metrics:", outcome.report["test"])
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
        epochs: int = typer.Option(1000),
        patience: int = typer.Option(20),
        device: str = typer.Option("auto"),
        fmt: str | None = typer.Option(None, "--format", help=FORMATS_HELP),
        max_len: int = typer.Option(50),
        set_: list[str] = typer.Option([], "--set", help="Extra TrainJobConfig field, key=value (JSON)."),
    ) -> None:
        """Original vs DR4SR vs DR4SR+ for each model, with paired significance (paper Table 3)."""
        from models.pipeline import TrainJobConfig, compare, load_rows

        dataset = _load_dataset(file, fmt, 5, 5, max_len)
        values = dict(epochs=epochs, patience=patience, device=device, max_len=max_len)
        values.update(_params(set_))
        try:
            config = TrainJobConfig.from_dict(values)
            with TerminalProgress() as progress:
                outcome = compare(dataset, load_rows(regenerated / "regenerated.npz"),
                                  [m.strip() for m in models.split(",") if m.strip()],
                                  [v.strip() for v in variants.split(",") if v.strip()], config, out, progress)
        except (ValueError, TypeError) as exc:
            raise _fail(str(exc)) from None
        for run in outcome.report["runs"]:
            sig = run.get("significance", {})
            p = f"  p(t)={sig['t_p']:.3g}" if "t_p" in sig else ""
            typer.echo(f"{run['model']:>8} {run['variant']:>8}  NDCG@20 {run['test']['ndcg@20']:.4f}"
                       f"  Recall@20 {run['test']['recall@20']:.4f}{p}")
        typer.echo(f"report: {out / 'report.html'}")
