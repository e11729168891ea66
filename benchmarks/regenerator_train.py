"""Regenerator training speed: our epoch versus the reference's training step.

Builds the pre-training pairs of a one-line-per-user dataset (``user item
item ...``, chronological) with models.patterns (alpha 5, beta 2, <= 10
patterns per source), trains the regenerator for ``--epochs`` epochs and
times them. The reference (spec §4.2, Q31/Q40: sources padded to the longest
source of the pair set, targets to 20 columns, full (B, 19, N+3) logits under
a dense mask, all K memories materialised, torch's own dropout kernels) is
re-implemented by ``Regenerator.losses(reference=True)`` and timed on a few batches in the same
run, alternating with our own training step (the shared machine's load
moves a lot: the interleaved ratio is the robust one), then extrapolated to
an epoch.

Last stdout line: one JSON object with epoch_s, pairs, peak_rss_mb,
reference_epoch_s, speedup (= reference_epoch_s / epoch_s) and
speedup_interleaved (per batch, same load).

    .venv/bin/python benchmarks/regenerator_train.py --dataset ../shared/data/amazon-beauty.txt
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.data.sequences import Sequences
from models.data.split import leave_one_out
from models.patterns import build_pairs, mine_patterns
from models.progress import ProgressEvent
from models.regenerator import (
    PairBatches,
    Regenerator,
    RegeneratorConfig,
    resolve_device,
    save_regenerator,
    train_regenerator,
    use_native_dropout,
    wrap_tokens,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_sequences(path: str | Path) -> tuple[Sequences, int]:
    """One line per user: ``user item item ...``; items remapped to 1..N in id order."""
    rows = []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2:
                rows.append([int(x) for x in parts[1:]])
    if not rows:
        raise SystemExit(f"{path}: no sequences")
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    ids, inverse = np.unique(flat, return_inverse=True)
    seqs = Sequences.from_lengths(inverse + 1, np.array([len(r) for r in rows]))
    return seqs, len(ids)


def build_dataset_pairs(path: str | Path, seed: int = 2024):
    """(split, sources, targets, N) with the reference's pairing rule (spec §2.3)."""
    seqs, n_items = load_sequences(path)
    split = leave_one_out(seqs, max_len=50)
    patterns = mine_patterns(split.mining, alpha=5, beta=2)
    pairs = build_pairs(split.pair_source, patterns, max_per_source=10, seed=seed)
    src, tgt = pairs.materialise(split.pair_source, patterns)
    return split, src, tgt, n_items, len(patterns)


def time_interleaved(src: Sequences, tgt: Sequences, n_items: int, config: RegeneratorConfig,
                     batches: int, anomaly: bool) -> tuple[float, float]:
    """Seconds per batch of (our training step, the reference's), alternating
    6 of ours with 1 reference step so both see the same machine load. The
    first step of each is a warm-up and not timed."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    ours, ref = (Regenerator(n_items, config).to(device).train() for _ in range(2))
    use_native_dropout(ref)  # the released code runs nn.Transformer's dropout kernels
    opts = [torch.optim.Adam(m.parameters(), lr=config.lr, betas=config.betas, eps=config.adam_eps,
                             fused=fused) for m, fused in ((ours, True), (ref, False))]
    src_tok, _ = wrap_tokens(src, ours.sos, ours.eos)  # padded to the longest source of the set
    tgt_tok, _ = wrap_tokens(tgt, ours.sos, ours.eos)
    tgt20 = np.zeros((len(tgt), 20), dtype=np.int64)  # the reference's max(20, longest) columns
    tgt20[:, : tgt_tok.shape[1]] = tgt_tok
    rng = np.random.default_rng(0)
    # ours: exactly the batches train_regenerator builds (shared sources included)
    ours_batches = PairBatches(src, tgt, ours.sos, ours.eos, config.batch_size, config.share_sources, device)
    stream = itertools.chain.from_iterable(ours_batches.epoch(rng) for _ in itertools.count())

    def step(reference: bool) -> float:
        pair_src = None
        if reference:  # the released code's batch: a random draw of pairs, padded wide
            rows = rng.choice(len(src), size=min(config.batch_size, len(src)), replace=False)
            s, t = torch.from_numpy(src_tok[rows]).to(device), torch.from_numpy(tgt20[rows]).to(device)
        else:
            s, t, pair_src = next(stream)
        model, opt = (ref, opts[1]) if reference else (ours, opts[0])
        start = time.perf_counter()
        rec, ent = model.losses(s, t, 1.0, reference=reference, pair_src=pair_src)
        opt.zero_grad(set_to_none=True)
        (rec + config.entropy_weight * ent).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    ours_t, ref_t = [], []
    with torch.autograd.set_detect_anomaly(anomaly):
        step(False), step(True)
        for i in range(batches):
            ours_t += [step(False) for _ in range(6)]
            ref_t.append(step(True))
            log(f"interleaved round {i + 1}: ours {np.mean(ours_t[-6:]):.3f}s/batch, "
                f"reference {ref_t[-1]:.2f}s/batch")
    return float(np.mean(ours_t)), float(np.mean(ref_t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="one line per user: user item item ...")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--profile", choices=("parity", "fixed"), default="parity")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--reference-batches", type=int, default=3)
    ap.add_argument("--reference-anomaly", action="store_true",
                    help="time the reference with autograd anomaly detection on, as released (Q32)")
    ap.add_argument("--save", default=None, help="save the trained regenerator to this folder")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    split, src, tgt, n_items, n_patterns = build_dataset_pairs(args.dataset)
    log(f"{len(split.pair_source)} users, {n_items} items, {n_patterns} patterns, "
        f"{len(src)} pairs ({time.perf_counter() - t0:.1f}s)")
    rss_pairs = peak_rss_mb()  # mining and pairing peak, before any training
    make = RegeneratorConfig.parity if args.profile == "parity" else RegeneratorConfig.fixed
    config = make(epochs=args.epochs, device=args.device)
    per_epoch = math.ceil(len(src) / config.batch_size)

    marks: list[float] = []
    last: dict = {}

    def progress(event: ProgressEvent) -> None:
        last.update(event.metrics)
        if event.done % per_epoch == 0:
            marks.append(time.perf_counter())
            log(f"epoch {event.epoch}: {marks[-1] - (marks[-2] if len(marks) > 1 else start):.1f}s "
                f"loss {event.metrics['loss']:.4f}")

    start = time.perf_counter()
    model = train_regenerator(src, tgt, n_items, config, progress=progress)
    total = time.perf_counter() - start
    epoch_times = np.diff([start, *marks]).tolist()
    rss = peak_rss_mb()
    if args.save:
        save_regenerator(model, args.save)

    ours_batch, ref_batch = time_interleaved(src, tgt, n_items, config, args.reference_batches,
                                             args.reference_anomaly)
    ref_epoch = ref_batch * per_epoch
    epoch_s = total / args.epochs
    print(json.dumps({
        "dataset": Path(args.dataset).name,
        "pairs": len(src),
        "num_items": n_items,
        "profile": args.profile,
        "device": str(resolve_device(config.device)),
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "batches_per_epoch": per_epoch,
        "epoch_s": round(epoch_s, 2),
        "epoch_s_each": [round(x, 2) for x in epoch_times],
        "final_loss": round(float(last.get("loss", float("nan"))), 4),
        "peak_rss_mb": round(rss, 1),
        "peak_rss_before_training_mb": round(rss_pairs, 1),
        "reference_batches_timed": args.reference_batches,
        "interleaved_batch_s": round(ours_batch, 4),
        "interleaved_reference_batch_s": round(ref_batch, 3),
        "speedup_interleaved": round(ref_batch / ours_batch, 2),
        "reference_anomaly_detection": args.reference_anomaly,
        "reference_epoch_s": round(ref_epoch, 1),
        "reference_peak_rss_mb": round(peak_rss_mb(), 1),
        "speedup": round(ref_epoch / epoch_s, 2),
    }))


if __name__ == "__main__":
    main()
