"""Hand-written speed devices against the library path, interleaved in one run.

Three comparisons, each a whole training step (forward, backward, optimiser)
on real Beauty batches, so a device that only wins in isolation does not count:

* ``regenerator_dropout``: the regenerator's training step with its CPU
  dropout (8 random bits per element, attention spelled out to use it)
  against ``use_native_dropout`` (``F.dropout`` and dropout inside
  ``F.scaled_dot_product_attention``), same model and batches.
* ``sasrec_dropout``: SASRec's training step with ``base.dropout`` (16-bit
  draws) and its spelled-out CPU attention, against ``F.dropout`` and
  ``F.scaled_dot_product_attention(is_causal=True, dropout_p=p)``.
* ``regenerator_packing``: the regenerator encoder and decoder (forward and
  backward) on packed real tokens with per-group attention padding, against
  the same layers on the dense padded batch.

Each pair alternates step by step (A, B, A, B, ...), so a busy spell on the
shared machine hits both; the first steps are warm-up. Also the bare
dropout kernels on a (4096, 256) tensor, for reference.

    nice -n 15 .venv/bin/python benchmarks/handwritten_kernels.py --dataset ../shared/data/amazon-beauty.txt

Last stdout line: one JSON object; ``ratio`` = library / hand-written time
(> 1: the hand-written device is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from library_kernels import sasrec_library_path  # noqa: E402
from regenerator_train import build_dataset_pairs  # noqa: E402

from models.batching import BatchIterator  # noqa: E402
from models.recommenders.base import dropout as base_dropout  # noqa: E402
from models.recommenders.sasrec import SASRec, SASRecConfig  # noqa: E402
from models.regenerator import (  # noqa: E402
    Layout,
    PairBatches,
    Regenerator,
    RegeneratorConfig,
    dropout_mask,
    use_native_dropout,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def interleave(a: Callable[[], None], b: Callable[[], None], steps: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(steps):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"handwritten_ms": round(1e3 * ma, 3), "library_ms": round(1e3 * mb, 3),
            "ratio": round(mb / ma, 3), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="not quiet: a long quality run occupies one of the 2 cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"benchmark": "handwritten_kernels", "dataset": Path(args.dataset).name,
                 "threads": args.threads, "machine": args.note, "torch": torch.__version__}

    # -- bare kernels ---------------------------------------------------------
    x = torch.randn(4096, 256)
    out["kernel_regenerator_dropout"] = interleave(
        lambda: x * dropout_mask(tuple(x.shape), 0.5, x), lambda: F.dropout(x, 0.5, True), 200)
    out["kernel_base_dropout"] = interleave(
        lambda: base_dropout(x, 0.5, True), lambda: F.dropout(x, 0.5, True), 200)
    log(f"kernels: {out['kernel_regenerator_dropout']} {out['kernel_base_dropout']}")

    # -- regenerator training step: own dropout vs the library's ----------------
    split, src, tgt, n_items, _ = build_dataset_pairs(args.dataset)
    config = RegeneratorConfig.parity(device="cpu")
    torch.manual_seed(0)
    models = [Regenerator(n_items, config).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    use_native_dropout(models[1])
    opts = [torch.optim.Adam(m.parameters(), lr=config.lr, betas=config.betas, eps=config.adam_eps, fused=True)
            for m in models]
    batches = PairBatches(src, tgt, models[0].sos, models[0].eos, config.batch_size, True, torch.device("cpu"))
    stream = list(itertools.islice(batches.epoch(np.random.default_rng(0)), 2 * args.steps + 8))
    cursor = {0: 0, 1: 0}

    def regen_step(i: int) -> Callable[[], None]:
        def run() -> None:
            s, t, pair_src = stream[cursor[i] % len(stream)]
            cursor[i] += 1
            rec, ent = models[i].losses(s, t, 1.0, pair_src=pair_src)
            opts[i].zero_grad(set_to_none=True)
            (rec + ent).backward()
            opts[i].step()
        return run

    out["regenerator_dropout"] = interleave(regen_step(0), regen_step(1), args.steps)
    log(f"regenerator dropout: {out['regenerator_dropout']}")

    # -- regenerator packing: packed token rows vs the dense padded batch -------
    model = models[0]
    use_native_dropout(model, False)

    def pack_step(packed: bool) -> Callable[[], None]:
        state = {"i": 0}

        def run() -> None:
            s, t, pair_src = stream[state["i"] % len(stream)]
            state["i"] += 1
            s = s.index_select(0, pair_src)  # one source row per pair, as the dense path needs
            memory, layout, _ = model.encode(s, True, packed=packed, groups=4 if packed else 1)
            b, width = t.shape
            emb = model.embed(t, torch.arange(width))[:, :-1]
            labels = t[:, 1:]
            # the decoder's row groups line up with the encoder's (same rows, same count)
            dec = Layout.packed(labels != 0, 4) if packed else Layout.dense(b, width - 1)
            cross = [layer.cross_kv(memory, layout) for layer in model.decoder_layers]
            h = model.decode_hidden(dec.to_packed(emb), dec, cross)
            loss = (dec.to_padded(h) * (labels != 0)[..., None]).square().sum()
            model.zero_grad(set_to_none=True)
            loss.backward()
        return run

    out["regenerator_packing"] = interleave(pack_step(True), pack_step(False), args.steps)
    log(f"regenerator packing: {out['regenerator_packing']}")

    # -- SASRec training step ------------------------------------------------------
    train = split.train
    torch.manual_seed(0)
    rec = SASRec(n_items, SASRecConfig())
    opt = torch.optim.Adam(rec.parameters(), lr=1e-3, fused=True)
    it = BatchIterator(train, 256, transform=rec.batch_transform(), bucket_chunk=32)
    sas_batches = list(itertools.islice(iter(it), 2 * args.steps + 8))

    def sas_step(library: bool) -> Callable[[], None]:
        state = {"i": 0}  # both paths see the same batch sequence

        def run() -> None:
            b = sas_batches[state["i"] % len(sas_batches)]
            state["i"] += 1
            with sasrec_library_path() if library else contextlib.nullcontext():
                loss = rec.training_loss(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    out["sasrec_dropout"] = interleave(sas_step(False), sas_step(True), args.steps)
    log(f"sasrec dropout: {out['sasrec_dropout']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
