"""Training throughput and full-ranking evaluation time of the target models on CPU.

For each model: sequences/s over one epoch of the original training rows
(the real trainer, ``models.training.train_model``) and the peak RSS of a
fresh process that loads the data and trains. Then the wall time of one
full-ranking evaluation pass (every user x every item, history masked).

Baseline: a faithful re-implementation of the reference's "as shipped" SASRec
step, measured in this run on a few batches and extrapolated to an epoch:
rows padded to 50, examples collated one at a time, PyTorch's
``nn.TransformerEncoder`` with causal + key-padding masks, negatives drawn by
``torch.multinomial`` over a dense ``B x (N+1)`` weight matrix, BCE, Adam.
(Its import-time autograd anomaly detection, quirk Q32, is left off, so the
baseline is faster than the shipped code.)

    python benchmarks/train_speed.py --dataset ../shared/data/amazon-beauty.txt

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.data.sequences import Sequences, Split  # noqa: E402
from models.data.split import leave_one_out  # noqa: E402

ALL_MODELS = ("sasrec", "gru4rec", "fmlp", "gnn", "cl4srec")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_split(path: str, max_len: int) -> tuple[Split, int]:
    """One line per user: ``user item item ...`` (already 5-core, chronological)."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1:
                rows.append([int(x) for x in parts[1:]])
    seqs = Sequences.from_lists(rows)
    return leave_one_out(seqs, max_len=max_len), int(seqs.items.max())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------
# workers (each runs in its own process so peak RSS is per model)
# ---------------------------------------------------------------------------


def worker_train(args: argparse.Namespace, name: str) -> dict:
    from models.training import TrainConfig, train_model

    split, n_items = load_split(args.dataset, 50)
    rows = len(split.train)
    train_end: dict[int, float] = {}
    valid_end: dict[int, float] = {}

    def progress(event) -> None:  # noqa: ANN001
        if event.stage == "train" and event.done == event.total:
            train_end[event.epoch] = time.perf_counter()
        elif event.stage == "valid":
            valid_end[event.epoch] = time.perf_counter()

    cfg = TrainConfig(
        model=name,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device="cpu",
        num_threads=args.threads,
        bucket_chunk=args.bucket_chunk,
        patience=args.epochs,
    )
    start = time.perf_counter()
    result = train_model(split.train, split.valid, split.test, n_items, cfg, progress=progress)
    # training spans only: from the previous validation's end (or the start) to the last batch
    train_seconds = sum(train_end[e] - valid_end.get(e - 1, start) for e in train_end)
    return {
        "model": name,
        "rows": rows,
        "epochs": args.epochs,
        "train_seconds": train_seconds,
        "seq_per_s": rows * args.epochs / train_seconds,
        "valid_ndcg@20": result.history[-1]["ndcg@20"],
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_eval(args: argparse.Namespace) -> dict:
    from models.evaluation import evaluate
    from models.recommenders import build_model

    torch.set_num_threads(args.threads)
    split, n_items = load_split(args.dataset, 50)
    torch.manual_seed(0)
    model = build_model("sasrec", n_items).eval()
    times = []
    for _ in range(args.eval_repeats):
        start = time.perf_counter()
        result = evaluate(model, split.test, ks=(10, 20), batch_size=2048)
        times.append(time.perf_counter() - start)
    return {
        "users": len(split.test),
        "items": n_items,
        "eval_s": statistics.median(times),
        "eval_times": times,
        "eval_ndcg@20_untrained": result.metrics["ndcg@20"],
        "peak_rss_mb": peak_rss_mb(),
    }


class ReferenceSASRec(nn.Module):
    """The reference's SASRec as shipped: fixed 50-slot rows, PyTorch encoder, masks."""

    def __init__(self, num_items: int, d: int = 64, max_len: int = 50) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d)
        self.drop = nn.Dropout(0.5)
        layer = nn.TransformerEncoderLayer(
            d, 2, 128, 0.5, activation="gelu", layer_norm_eps=1e-12, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.register_buffer(
            "causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1)
        )

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(items.shape[1])
        x = self.drop(self.item_emb(items) + self.pos_emb(positions))
        return self.encoder(x, mask=self.causal, src_key_padding_mask=items == 0)


def worker_reference(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    split, n_items = load_split(args.dataset, 50)
    train = split.train.seqs
    lengths = train.lengths
    inputs = torch.from_numpy(train.slice_rows(np.zeros_like(lengths), lengths - 1).pad(length=50))
    targets = torch.from_numpy(train.slice_rows(np.ones_like(lengths), lengths).pad(length=50))
    torch.manual_seed(0)
    model = ReferenceSASRec(n_items)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.ones(n_items + 1)
    weights[0] = 0
    order = torch.randperm(len(inputs))
    bs = args.batch_size

    def step(b: int) -> None:
        idx = order[b * bs : (b + 1) * bs]
        # per-example collation, as the reference's dataset + default collate do
        examples = [{"in": inputs[i], "tg": targets[i]} for i in idx.tolist()]
        x = torch.stack([e["in"] for e in examples])
        y = torch.stack([e["tg"] for e in examples])
        h = model(x)  # (B, 50, d)
        neg = torch.multinomial(weights.expand(len(x), -1), 50, replacement=True)  # (B, 50)
        table = model.item_emb.weight
        pos_s = (h * table[y]).sum(-1)
        neg_s = (h * table[neg]).sum(-1)
        valid = (y != 0).float()
        per = nn.functional.softplus(-pos_s) + nn.functional.softplus(neg_s)
        loss = (per * valid).sum() / valid.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    for b in range(2):  # warm-up
        step(b)
    start = time.perf_counter()
    n = args.reference_batches
    for b in range(2, 2 + n):
        step(b)
    seconds = time.perf_counter() - start
    return {
        "reference_batches": n,
        "reference_seq_per_s": n * bs / seconds,
        "reference_epoch_s_extrapolated": len(inputs) / (n * bs / seconds),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_worker(args: argparse.Namespace, which: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", which] + [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("worker", "models")
    ]
    log(f"[train_speed] {which} ...")
    # OpenMP threads that spin while waiting collapse throughput on a shared,
    # oversubscribed CPU (measured here: 2 threads 3x slower than 1); sleeping
    # waiters keep 2 threads useful. An explicit setting in the caller's env wins.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {which} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"[train_speed] {which}: {json.dumps(result)}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", required=True, help="one-line-per-user file (S3-Rec format)")
    p.add_argument("--models", default=",".join(ALL_MODELS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bucket-chunk", type=int, default=32, help="0 = no length bucketing")
    p.add_argument("--reference-batches", type=int, default=12)
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not Path(args.dataset).is_file():
        p.error(f"dataset {args.dataset} not found")

    if args.worker is not None:
        if args.worker == "eval":
            out = worker_eval(args)
        elif args.worker == "reference":
            out = worker_reference(args)
        else:
            out = worker_train(args, args.worker)
        print(json.dumps(out))
        return

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(ALL_MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {list(ALL_MODELS)}")
    summary: dict = {
        "dataset": Path(args.dataset).name,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "batch_size": args.batch_size,
        "bucket_chunk": args.bucket_chunk,
        "epochs": args.epochs,
        "torch": torch.__version__,
    }
    reference = run_worker(args, "reference")
    summary["reference_seq_per_s"] = reference["reference_seq_per_s"]
    for name in models:
        r = run_worker(args, name)
        summary[f"{name}_seq_per_s"] = r["seq_per_s"]
        summary[f"{name}_peak_rss_mb"] = r["peak_rss_mb"]
        summary[f"{name}_epoch_s"] = r["train_seconds"] / args.epochs
    ev = run_worker(args, "eval")
    summary["eval_s"] = ev["eval_s"]
    summary["eval_users"] = ev["users"]
    summary["eval_items"] = ev["items"]
    if "sasrec_seq_per_s" in summary:
        summary["sasrec_speedup"] = summary["sasrec_seq_per_s"] / summary["reference_seq_per_s"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
