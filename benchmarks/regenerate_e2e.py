"""End-to-end regeneration time: ingest, mine, pair, SASRec pre-training,
regenerator training, batched decoding and assembly, as `dr4sr regenerate`
runs them, with the spec's defaults (40 regenerator epochs, SASRec
pre-training early-stopped).

The reference cannot run beside it in reasonable time (about 9 hours on the
2-core CPU as shipped, 5 with anomaly detection off: issue #4), so the ratio
is taken against the target of 20 minutes (``--target-s``) and against an
estimate of the reference built from its per-batch regenerator step and its
per-decode time measured in the same run (``--reference-batches``;
``benchmarks/regenerator_train.py`` and ``benchmarks/decoding.py`` measure
those two in more detail).

Last stdout line: one JSON object with total_s, the stage timings, peak_rss_mb,
ratio_to_target and, unless ``--reference-batches 0``, reference_estimate_s.

    .venv/bin/python benchmarks/regenerate_e2e.py --dataset ../shared/data/amazon-beauty.txt
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.data.preprocess import prepare  # noqa: E402
from models.pipeline import RegenerationConfig, regenerate  # noqa: E402
from models.progress import ProgressEvent  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_estimate(out: Path, stats: dict, dataset, max_len: int, batches: int, sample: int) -> dict:
    """Seconds the reference would need for the two stages that dominate it:
    its regenerator step (timed on ``batches`` batches of the same pairs) x
    the 40 x batches-per-epoch steps, and its one-at-a-time decoder (timed on
    ``sample`` rows) x all decodes. Pre-training and mining are taken as ours."""
    from models.data.sequences import Sequences
    from models.decoding import decode_reference, generative_schedule
    from models.regenerator import (
        Regenerator,
        load_regenerator,
        resolve_device,
        use_native_dropout,
        wrap_tokens,
    )

    model = load_regenerator(out / "regenerator")
    config = model.config
    device = resolve_device(config.device)
    pairs = stats["patterns"]["pairs"]
    # The reference's training step, on random pair-shaped batches of the
    # regenerated data's own sources (padded to 50, targets to 20 columns).
    ref = Regenerator(model.num_items, config).to(device).train()
    use_native_dropout(ref)
    opt = torch.optim.Adam(ref.parameters(), lr=config.lr, betas=config.betas, eps=config.adam_eps)
    rng = np.random.default_rng(0)
    n_items = model.num_items
    src = rng.integers(1, n_items + 1, size=(config.batch_size, 13))
    s_tok, _ = wrap_tokens(Sequences.from_lists(src.tolist()), model.sos, model.eos)
    s_tok = np.pad(s_tok, ((0, 0), (0, 50 - s_tok.shape[1])))
    t_tok, _ = wrap_tokens(Sequences.from_lists(src[:, :2].tolist()), model.sos, model.eos)
    t_tok = np.pad(t_tok, ((0, 0), (0, 20 - t_tok.shape[1])))
    s, t = torch.from_numpy(s_tok).to(device), torch.from_numpy(t_tok).to(device)
    times = []
    for i in range(batches + 1):
        start = time.perf_counter()
        rec, ent = ref.losses(s, t, 1.0, reference=True)
        opt.zero_grad(set_to_none=True)
        (rec + config.entropy_weight * ent).backward()
        opt.step()
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    step_s = float(np.mean(times))
    train_s = step_s * config.epochs * -(-pairs // config.batch_size)
    # the reference's decoder, one source and one memory at a time, on real sources
    real = dataset.split(max_len).pair_source
    picks = np.random.default_rng(1).choice(len(real), size=min(sample, len(real)), replace=False)
    k = config.num_memories
    schedule = generative_schedule(len(picks) * k, config)
    start = time.perf_counter()
    for i, row in enumerate(picks):
        for m in range(k):
            decode_reference(model, real[int(row)], m, schedule[i * k + m], config)
    per_decode = (time.perf_counter() - start) / (len(picks) * k)
    decode_s = per_decode * stats["regenerated"]["decoded"]
    return {
        "reference_step_s": round(step_s, 3),
        "reference_regenerator_s": round(train_s, 1),
        "reference_decode_s": round(decode_s, 1),
        "reference_estimate_s": round(stats["timings"]["pretrain_s"] + train_s + decode_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, type=Path, help="an interaction log in any supported format")
    ap.add_argument("--profile", choices=("parity", "fixed"), default="fixed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--target-s", type=float, default=1200.0)
    ap.add_argument("--reference-batches", type=int, default=2)
    ap.add_argument("--reference-sample", type=int, default=40, help="sources decoded one at a time")
    ap.add_argument("--out", type=Path, default=None, help="keep the regenerated folder here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    dataset = prepare(args.dataset)
    prepare_s = time.perf_counter() - started
    out = args.out or Path(tempfile.mkdtemp(prefix="dr4sr-e2e-")) / "regenerated"
    last = {"stage": None}

    def progress(event: ProgressEvent) -> None:
        if event.stage != last["stage"] and ":" not in event.stage:
            last["stage"] = event.stage
            log(f"{event.stage} ({time.perf_counter() - started:.0f}s)")

    config = RegenerationConfig(profile=args.profile, device=args.device)
    outcome = regenerate(dataset, config, out, progress)
    total_s = time.perf_counter() - started
    stats = outcome.stats
    result = {
        "dataset": args.dataset.name,
        "profile": args.profile,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "threads": torch.get_num_threads(),
        "users": stats["dataset"]["users"],
        "pairs": stats["patterns"]["pairs"],
        "prepare_s": round(prepare_s, 1),
        **{k: v for k, v in stats["timings"].items()},
        "total_s": round(total_s, 1),
        "pretrain_epochs_run": stats.get("pretrain", {}).get("epochs_run"),
        "rows": stats["rows"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "target_s": args.target_s,
        "ratio_to_target": round(total_s / args.target_s, 3),
    }
    if args.reference_batches > 0:
        log("timing the reference's regenerator step and one-at-a-time decoder")
        ref = reference_estimate(out, stats, dataset, config.max_len, args.reference_batches,
                                 args.reference_sample)
        result.update(ref)
        result["speedup_vs_reference_estimate"] = round(ref["reference_estimate_s"] / total_s, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
