"""DR4SR+ overhead from interleaved steps, in one process (robust on a busy machine).

``personalizer_cost.py`` times whole epochs of two separate runs; on a shared
machine whose load moves by the minute, that ratio is mostly noise. This
benchmark builds the same rows (Beauty: original + patterns, optionally the
stand-in regenerated rows of ``personalizer_cost.py``), one SASRec with the
parity personalizer attached, and interleaves, round after round, 4 plain
training steps, 4 weighted training steps (same batches) and one meta step.
The per-epoch overhead at ``--interval`` is estimated as

    (weighted step + meta step / interval) / plain step

from medians, on the wall clock and in process CPU time. ``--variant
item_table_slice`` also times, interleaved with the current code, SASRec's
``item_embeddings()`` as it was before it returned the whole table (a slice
of the full table, whose backward zero-fills and copies the table once per
autograd pass). On the loaded 2-core machine the difference between the two
was within run-to-run noise (one run: meta step -27 % CPU time, the next:
+16 %); see benchmarks/results/personalizer_overhead.md.

    nice -n 15 .venv/bin/python benchmarks/personalizer_step_cost.py --dataset ../shared/data/amazon-beauty.txt --regenerated 34073 --variant item_table_slice

Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from personalizer_cost import load  # noqa: E402

from models.batching import BatchIterator  # noqa: E402
from models.personalizer import PersonalizedObjective, PersonalizerConfig  # noqa: E402
from models.recommenders import build_model  # noqa: E402
from models.recommenders.sasrec import SASRec  # noqa: E402


@contextlib.contextmanager
def item_table_slice():
    current = SASRec.item_embeddings
    SASRec.item_embeddings = lambda self: self.item_emb.weight[: self.num_items + 1]
    try:
        yield
    finally:
        SASRec.item_embeddings = current


VARIANTS = {"current": contextlib.nullcontext, "item_table_slice": item_table_slice}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--regenerated", type=int, default=0, help="stand-in regenerated rows (see personalizer_cost.py)")
    ap.add_argument("--no-patterns", dest="patterns", action="store_false")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--interval", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2023)
    ap.add_argument("--variant", choices=sorted(VARIANTS), action="append", default=[])
    ap.add_argument("--note", default="not quiet: shared 2-core machine")
    args = ap.parse_args()
    args.max_len = 50
    torch.set_num_threads(args.threads)
    split, train, n_items, info = load(args)
    torch.manual_seed(args.seed)
    model = build_model("sasrec", n_items, {"max_len": 50}, train=train).train()
    objective = PersonalizedObjective(PersonalizerConfig.parity(warmup_epochs=0, interval=args.interval),
                                      train, 256, args.seed, "bce", bucket_chunk=32)
    objective.attach(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    batches = list(BatchIterator(train, 256, transform=model.batch_transform(), bucket_chunk=32))
    rng = np.random.default_rng(args.seed)

    def step(weighted: bool, batch) -> None:  # noqa: ANN001
        loss = objective.weighted_loss(model, batch, track=True) if weighted else model.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    variants = ["current", *[v for v in args.variant if v != "current"]]
    times = {(v, c, k): [] for v in variants for c in ("wall", "cpu") for k in ("plain", "weighted", "meta")}

    def timed(variant: str, kind: str, fn) -> None:  # noqa: ANN001
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        times[(variant, "wall", kind)].append(time.perf_counter() - w0)
        times[(variant, "cpu", kind)].append(time.process_time() - c0)

    for r in range(args.rounds + 2):  # the first two rounds are warm-up
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            with VARIANTS[v]():
                for _ in range(4):
                    b = batches[rng.integers(len(batches))]
                    timed(v, "plain", lambda b=b: step(False, b))
                    timed(v, "weighted", lambda b=b: step(True, b))
                timed(v, "meta", lambda: objective.meta_step(model))
    out: dict = {"benchmark": "personalizer_step_cost", "dataset": Path(args.dataset).name,
                 "rows": {k: int(v) for k, v in train.counts().items()},
                 "regenerated_rows": "stand-ins" if args.regenerated else "none",
                 "rounds": args.rounds, "interval": args.interval, "threads": args.threads, "note": args.note}
    for v in variants:
        for c in ("wall", "cpu"):
            m = {k: float(np.median(times[(v, c, k)][8 if k != "meta" else 2:])) for k in ("plain", "weighted", "meta")}
            out[f"{v}_{c}"] = {**{f"{k}_ms": round(1e3 * x, 1) for k, x in m.items()},
                               "meta_over_plain": round(m["meta"] / m["plain"], 2),
                               "est_overhead": round((m["weighted"] + m["meta"] / args.interval) / m["plain"], 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
