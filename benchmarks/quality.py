"""Quality under the paper's protocol: train a target model on original,
regenerated (DR4SR) or personalized (DR4SR+) data and report test metrics.

    python benchmarks/quality.py --dataset ../shared/data/amazon-beauty.txt --model sasrec
    python benchmarks/quality.py --dataset ... --variant dr4sr --profile parity
    python benchmarks/quality.py --dataset ... --variant dr4sr+ --ablation end_to_end

The regenerated data is produced in the same run (or reused with
``--regenerated DIR``, a folder written by ``dr4sr regenerate``). Progress
goes to stderr; the last stdout line is one JSON object with ``dataset``,
``model``, ``variant``, ``device``, ``epochs``, ``seconds`` and ``test``.
``--record`` also appends the figures to ``benchmarks/results/quality.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.data.preprocess import prepare  # noqa: E402
from models.pipeline import (  # noqa: E402
    RegenerationConfig,
    TrainJobConfig,
    load_rows,
    regenerate,
    train,
)
from models.progress import ProgressEvent  # noqa: E402


def _log_progress(event: ProgressEvent) -> None:
    if event.stage.endswith("valid") or (event.total and event.done == event.total and "train" not in event.stage):
        metrics = " ".join(f"{k}={v:.4f}" for k, v in event.metrics.items())
        print(f"[{time.strftime('%H:%M:%S')}] {event.stage} epoch={event.epoch} {metrics} {event.message or ''}",
              file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, type=Path)
    p.add_argument("--model", default="sasrec")
    p.add_argument("--variant", default="original", choices=["original", "dr4sr", "dr4sr+"])
    p.add_argument("--ablation", default="none", choices=["none", "no_diversity", "patterns_only", "end_to_end"],
                   help="Paper Table 4: (A) no_diversity, (B) patterns_only, (C) end_to_end (DR4SR+ only).")
    p.add_argument("--profile", default="fixed", choices=["parity", "fixed"], help="Regenerator profile (default: the product default, fixed).")
    p.add_argument("--personalizer-profile", default="parity", choices=["parity", "fixed"])
    p.add_argument("--regenerated", type=Path, help="Reuse a `dr4sr regenerate` folder.")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--regenerator-epochs", type=int, default=40)
    p.add_argument("--pretrain-epochs", type=int, default=200)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("--record", action="store_true", help="Append the result to benchmarks/results/quality.jsonl.")
    args = p.parse_args()

    started = time.perf_counter()
    dataset = prepare(args.dataset)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="dr4sr-quality-"))
    rows, regen_stats = None, None
    if args.variant != "original":
        if args.regenerated:
            rows = load_rows(args.regenerated / "regenerated.npz")
            regen_stats = json.loads((args.regenerated / "stats.json").read_text())
            # the profile (and ablation) the folder was made with, not the flag's default
            made_with = json.loads((args.regenerated / "config.json").read_text())["regeneration"]
            args.profile = made_with["profile"]
            if args.ablation == "none" and made_with.get("ablation"):
                args.ablation = made_with["ablation"]
        else:
            ablation = args.ablation if args.ablation in ("no_diversity", "patterns_only") else None
            config = RegenerationConfig(
                profile=args.profile, regenerator_epochs=args.regenerator_epochs,
                pretrain_epochs=args.pretrain_epochs, device=device, ablation=ablation,
            )
            outcome = regenerate(dataset, config, work / "regenerated", _log_progress)
            rows, regen_stats = outcome.rows, outcome.stats
    personalizer = {"mode": "end_to_end"} if args.ablation == "end_to_end" else {}
    cfg = TrainJobConfig(
        model=args.model, personalize=args.variant == "dr4sr+", epochs=args.epochs, patience=args.patience,
        seed=args.seed, device=device, personalizer_profile=args.personalizer_profile, personalizer=personalizer,
    )
    outcome = train(dataset, rows, cfg, work / "trained", _log_progress)
    result = {
        "dataset": args.dataset.name,
        "model": args.model,
        "variant": args.variant,
        "ablation": args.ablation,
        "profile": args.profile if args.variant != "original" else None,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "epochs": outcome.report["epochs_run"],
        "best_epoch": outcome.report["best_epoch"],
        "seconds": round(time.perf_counter() - started, 1),
        "test": outcome.report["test"],
        "valid": outcome.report["valid"],
        "rows": outcome.report["dataset"]["training_rows"],
        "regeneration_timings": (regen_stats or {}).get("timings"),
        "report": str(work / "trained" / "report.html"),
    }
    if args.record:
        path = Path(__file__).resolve().parent / "results" / "quality.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps({**result, "date": time.strftime("%Y-%m-%d")}) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
