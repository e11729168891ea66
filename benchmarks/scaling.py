"""How the pipeline's cost grows with the log: wall time and peak RSS per stage
on synthetic logs of growing size (issue 15).

For each ``--users`` point a synthetic log is generated (``models.data.synthetic``,
items = users / 4 or a fixed ``--items``, patterns = users / 50, not timed) and every stage runs in
its own fresh process, so each stage's peak RSS is its own (it includes
loading that stage's inputs from the work folder, which is not timed):

* ``prepare``: ingest the CSV, iterative 5-core, id maps, sort (whole log);
* ``mine``: pattern mining with the pipeline's default adaptive beta (whole log);
* ``pairs``: (sequence, pattern) pairs, <= 10 per user (whole log);
* ``pretrain_epoch``: one SASRec epoch on the original rows (BCE, batch 256);
* ``regenerator_epoch``: one regenerator epoch over the pairs (batch 256,
  the pair batches' set-up included);
* ``decode``: hybrid inference of every user x K=5 memories;
* ``target_epoch``: one SASRec epoch on original + pattern rows (the
  regenerated rows are not decoded for every user here, see ``decode``);
* ``evaluate``: full-ranking validation of every user;
* ``dr4sr_plus``: DR4SR+ training overhead, the seconds of a personalised
  epoch divided by a plain one on the same rows (a ratio, not part of the
  growth figure).

The epoch stages and decoding are timed on a fixed amount of work (``--steps``
optimiser steps after 2 warm-up steps; ``--decode-users`` users;
``--eval-users`` users) and extrapolated linearly to the whole epoch / all
users: the table says so (``extrapolated``). Models are untrained (random
weights): an untrained regenerator decodes to the length cap more often, so
``decode`` is an upper bound of a trained one's.

The last stdout line is one JSON object: ``points`` (users, items,
interactions and per stage seconds, per_interaction_us, peak_rss_mb) and
``worst_growth``, the largest ratio of per-interaction cost between the
biggest and the smallest point over all stages. ``--md`` writes the same
figures as a Markdown table with a log-log plot (PNG) of seconds per stage
against interactions.

    python benchmarks/scaling.py --users 25000,100000
    python benchmarks/scaling.py            # 25k, 100k, 300k and 1M users
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = (
    "prepare",
    "mine",
    "pairs",
    "pretrain_epoch",
    "regenerator_epoch",
    "decode",
    "target_epoch",
    "evaluate",
)
EXTRA = ("dr4sr_plus",)
ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- stages (each runs in its own process: ``--stage NAME --work DIR``) ---------


def _dataset(work: Path):
    from models.data.preprocess import PreparedDataset

    return PreparedDataset.load(work / "prepared")


def _load_patterns(work: Path):
    from models.data.sequences import Sequences
    from models.patterns import Patterns

    with np.load(work / "patterns.npz") as z:
        return Patterns(Sequences(z["items"], z["offsets"]), z["support"], int(z["min_support"]))


def _load_pairs(work: Path):
    from models.patterns import Pairs

    with np.load(work / "pairs.npz") as z:
        return Pairs(z["source_index"], z["pattern_index"], z["matches"])


def _time_steps(step, steps: int, total: int) -> tuple[float, dict]:
    """Seconds of ``total`` steps, extrapolated from ``steps`` timed ones after 2 warm-ups."""
    for _ in range(min(2, total)):
        step()
    n = max(1, min(steps, total - 2))
    t = time.perf_counter()
    for _ in range(n):
        step()
    per = (time.perf_counter() - t) / n
    return per * total, {"timed_steps": n, "epoch_steps": total, "extrapolated": n < total}


def _sasrec_epoch(rows, num_items: int, steps: int) -> tuple[float, dict]:
    import torch

    from models.batching import AllPositions, BatchIterator
    from models.recommenders import build_model

    torch.manual_seed(0)
    model = build_model("sasrec", num_items, {"max_len": 50}, train=rows)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    it = BatchIterator(rows, 256, shuffle=True, generator=np.random.default_rng(0),
                       transform=AllPositions(50), bucket_chunk=32)
    batches = iter(it)
    model.train()

    def step() -> None:
        loss = model.training_loss(next(batches), "bce")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _time_steps(step, steps, len(it))


def run_stage(stage: str, work: Path, args) -> dict:
    import torch

    # One intra-op thread: on a shared machine a descheduled OpenMP thread makes
    # every parallel region wait (2 threads measured 5-10x slower than 1 here).
    torch.set_num_threads(args.threads)
    info: dict = {}
    if stage == "prepare":
        from models.data.preprocess import prepare

        t = time.perf_counter()
        ds = prepare(work / "data.csv")
        seconds = time.perf_counter() - t
        ds.save(work / "prepared")
        info = {"users": ds.num_users, "items": ds.num_items, "interactions": int(len(ds.sequences.items))}
        return {"seconds": seconds, "info": info}
    ds = _dataset(work)
    split = ds.split(50)
    if stage == "mine":
        from models.patterns import mine_patterns, pattern_budget

        t = time.perf_counter()
        pats = mine_patterns(split.mining, 5, 2, max_patterns=pattern_budget(len(split.train)))
        seconds = time.perf_counter() - t
        np.savez(work / "patterns.npz", items=pats.seqs.items, offsets=pats.seqs.offsets,
                 support=pats.support, min_support=pats.min_support)
        return {"seconds": seconds, "info": {"patterns": len(pats), "beta": int(pats.min_support)}}
    if stage == "pairs":
        from models.patterns import build_pairs

        pats = _load_patterns(work)
        t = time.perf_counter()
        pairs = build_pairs(split.pair_source, pats, 10, "anywhere", 5, 2024)
        seconds = time.perf_counter() - t
        np.savez(work / "pairs.npz", source_index=pairs.source_index, pattern_index=pairs.pattern_index,
                 matches=pairs.matches)
        return {"seconds": seconds, "info": {"pairs": len(pairs), "matches": int(pairs.matches.sum())}}
    if stage == "pretrain_epoch":
        seconds, info = _sasrec_epoch(split.train, ds.num_items, args.steps)
        return {"seconds": seconds, "info": info}
    if stage == "target_epoch":
        from models.patterns import pattern_rows

        rows = split.train.concat(pattern_rows(_load_patterns(work)))
        seconds, info = _sasrec_epoch(rows, ds.num_items, args.steps)
        return {"seconds": seconds, "info": {**info, "rows": len(rows)}}
    if stage == "regenerator_epoch":
        import torch

        from models.config import RegeneratorConfig
        from models.regenerator import PairBatches, Regenerator

        src, tgt = _load_pairs(work).materialise(split.pair_source, _load_patterns(work))
        config = RegeneratorConfig.fixed()
        torch.manual_seed(0)
        model = Regenerator(ds.num_items, config).train()
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.adam_eps,
                               fused=True)
        t = time.perf_counter()
        batches = PairBatches(src, tgt, model.sos, model.eos, 256, True, torch.device("cpu"))
        setup = time.perf_counter() - t
        it = batches.epoch(np.random.default_rng(0))

        def step() -> None:
            s, g, p = next(it)
            rec, ent = model.losses(s, g, 1.0, pair_src=p)
            opt.zero_grad(set_to_none=True)
            (rec + ent).backward()
            opt.step()

        seconds, info = _time_steps(step, args.steps, len(batches))
        return {"seconds": seconds + setup, "info": {**info, "setup_s": round(setup, 2), "pairs": len(src)}}
    if stage == "decode":
        import torch

        from models.config import RegeneratorConfig
        from models.decoding import decode
        from models.regenerator import Regenerator

        config = RegeneratorConfig.fixed()
        torch.manual_seed(0)
        model = Regenerator(ds.num_items, config).eval()
        n = len(split.pair_source)
        pick = np.sort(np.random.default_rng(0).choice(n, min(n, args.decode_users), replace=False))
        sources = split.pair_source.take(pick)
        t = time.perf_counter()
        out = decode(model, sources, config)
        seconds = (time.perf_counter() - t) * n / len(pick)
        return {"seconds": seconds, "info": {"decoded_users": len(pick), "extrapolated": len(pick) < n,
                                             "mean_len": float(out.seqs.lengths.mean())}}
    if stage == "evaluate":
        import torch

        from models.evaluation import evaluate
        from models.recommenders import build_model

        torch.manual_seed(0)
        model = build_model("sasrec", ds.num_items, {"max_len": 50}, train=split.train).eval()
        n = len(split.valid)
        pick = np.sort(np.random.default_rng(0).choice(n, min(n, args.eval_users), replace=False))
        rows = split.valid.take(pick)
        t = time.perf_counter()
        evaluate(model, rows, ks=(10, 20))
        seconds = (time.perf_counter() - t) * n / len(pick)
        return {"seconds": seconds, "info": {"evaluated_users": len(pick), "extrapolated": len(pick) < n}}
    if stage == "dr4sr_plus":
        from models.config import PersonalizerConfig, TrainConfig
        from models.patterns import pattern_rows
        from models.personalizer import train_personalized
        from models.training import train_model

        rows = split.train.concat(pattern_rows(_load_patterns(work)))
        keep = np.sort(np.random.default_rng(0).choice(len(rows), min(len(rows), args.dr4sr_rows), replace=False))
        rows = rows.take(keep)
        tc = TrainConfig(model="sasrec", epochs=2, patience=5, valid_sample=min(512, len(split.valid) // 2))
        # only the epoch seconds are read: the closing test ranks a small sample of users, not the
        # whole log (at 1M users x 217k items a full test would cost an hour per run here)
        test = split.test.take(np.arange(min(1024, len(split.test))))
        plain = train_model(rows, split.valid, test, ds.num_items, tc)
        pers = train_personalized(rows, split.valid, test, ds.num_items, tc,
                                  PersonalizerConfig.parity(warmup_epochs=0))
        p, q = plain.history[-1]["seconds"], pers.history[-1]["seconds"]
        return {"seconds": q, "info": {"plain_epoch_s": round(p, 3), "ratio": round(q / p, 3), "rows": len(rows)}}
    raise SystemExit(f"unknown stage {stage!r}")


# -- driver ---------------------------------------------------------------------


def generate(work: Path, users: int, items: int | None = None) -> None:
    from models.data import synthetic

    if (work / "data.csv").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    data = synthetic.generate(num_users=users, num_items=items or max(100, users // 4),
                              num_patterns=max(40, users // 50), seed=0)
    synthetic.write(work / "data.csv", data)
    log(f"generated {users} users in {time.perf_counter() - t:.0f}s")


def run_point(users: int, args) -> dict:
    work = Path(args.work) / (f"u{users}" if args.items is None else f"u{users}-i{args.items}")
    generate(work, users, args.items)
    point: dict = {"users_requested": users, "stages": {}}
    if args.items is not None:
        point["items_requested"] = args.items
    for stage in (*STAGES, *EXTRA):
        if stage in args.skip:
            continue
        cmd = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--steps", str(args.steps),
               "--decode-users", str(args.decode_users), "--eval-users", str(args.eval_users),
               "--dr4sr-rows", str(args.dr4sr_rows), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            log(f"{users}: {stage} failed:\n{proc.stderr[-3000:]}")
            point["stages"][stage] = {"error": proc.stderr.strip().splitlines()[-1:]}
            if stage in ("prepare", "mine", "pairs"):
                break
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if stage == "prepare":
            point.update(out["info"])
        point["stages"][stage] = {
            "seconds": round(out["seconds"], 3),
            "peak_rss_mb": round(out["peak_rss_mb"], 1),
            **({"per_interaction_us": round(out["seconds"] / point["interactions"] * 1e6, 3)}
               if stage in STAGES else {}),
            **out["info"],
        }
        log(f"{users}: {stage} {out['seconds']:.1f}s, peak RSS {out['peak_rss_mb']:.0f} MB, {out['info']}")
        (work / "point.json").write_text(json.dumps(point))  # what finished so far
    return point


def worst_growth(points: list[dict]) -> dict:
    done = [p for p in points if "interactions" in p]
    if len(done) < 2:
        return {"ratio": None, "stage": None}
    lo, hi = min(done, key=lambda p: p["interactions"]), max(done, key=lambda p: p["interactions"])
    best = {"ratio": None, "stage": None}
    for stage in STAGES:
        a, b = lo["stages"].get(stage, {}), hi["stages"].get(stage, {})
        if "per_interaction_us" in a and "per_interaction_us" in b and a["per_interaction_us"] > 0:
            r = b["per_interaction_us"] / a["per_interaction_us"]
            if best["ratio"] is None or r > best["ratio"]:
                best = {"ratio": round(r, 3), "stage": stage}
    return best


def write_md(path: Path, result: dict, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in result["points"] if "interactions" in p]
    png = path.with_suffix(".png")
    fig, ax = plt.subplots(figsize=(7, 5))
    for stage in STAGES:
        xs = [p["interactions"] for p in points if "seconds" in p["stages"].get(stage, {})]
        ys = [p["stages"][stage]["seconds"] for p in points if "seconds" in p["stages"].get(stage, {})]
        if xs:
            ax.plot(xs, ys, marker="o", label=stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions (after 5-core)")
    ax.set_ylabel("seconds (epoch stages and decoding extrapolated)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    lines = ["# Scaling: seconds and peak RSS per stage against log size", "",
             "Measured with `benchmarks/scaling.py` (each stage a fresh process; peak RSS is that process's).",
             "", note, "",
             f"![seconds per stage against interactions, log-log]({png.name})", ""]
    head = "| stage | " + " | ".join(f"{p['users']:,} users / {p['items']:,} items / {p['interactions']:,} int." for p in points) + " |"
    lines += [head, "|---" * (len(points) + 1) + "|"]
    for stage in (*STAGES, *EXTRA):
        cells = []
        for p in points:
            s = p["stages"].get(stage)
            if not s:
                cells.append("not run")
            elif "error" in s:
                cells.append(f"failed: {s['error']}")
            elif stage == "dr4sr_plus":
                cells.append(f"x{s['ratio']} ({s['seconds']:.1f} s vs {s['plain_epoch_s']:.1f} s, {s['peak_rss_mb']:,.0f} MB)")
            else:
                ext = " (extrap.)" if s.get("extrapolated") else ""
                cells.append(f"{s['seconds']:.1f} s{ext}, {s['per_interaction_us']:.2f} µs/int., {s['peak_rss_mb']:,.0f} MB")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    wg = result["worst_growth"]
    lines += ["", f"**worst_growth** (per-interaction cost, biggest / smallest point): {wg['ratio']} ({wg['stage']})", "",
              "```json", json.dumps(result, indent=1), "```", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="25000,100000,300000,1000000")
    ap.add_argument("--work", default="/tmp/dr4sr-scaling")
    ap.add_argument("--items", type=int, default=None,
                    help="one catalogue size for every point (default: users / 4, the catalogue grows with the log); "
                         "separates the growth that comes from the log's length from the growth that comes from the "
                         "catalogue")
    ap.add_argument("--steps", type=int, default=20, help="timed optimiser steps per epoch stage")
    ap.add_argument("--decode-users", type=int, default=1000)
    ap.add_argument("--eval-users", type=int, default=4096)
    ap.add_argument("--dr4sr-rows", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per stage process")
    ap.add_argument("--skip", default="", help="comma-separated stages not to run")
    ap.add_argument("--md", default=None, help="write the Markdown table (and a PNG next to it)")
    ap.add_argument("--note", default="", help="a line for the Markdown (machine load, say)")
    ap.add_argument("--merge", default=None,
                    help="comma-separated earlier results whose points are kept: a run's log (last line JSON) or a "
                         "work folder's point.json (a partial point); with --users '' only rewrites --md")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    if args.stage:
        out = run_stage(args.stage, Path(args.work), args)
        out["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(out))
        return
    points = []
    for merge in filter(None, (args.merge or "").split(",")):
        text = Path(merge).read_text().strip()
        loaded = json.loads(text.splitlines()[-1])
        extra = loaded["points"] if "points" in loaded else [loaded]  # a log's last line or a point.json
        have = {p["users_requested"] for p in extra}
        points = [p for p in points if p["users_requested"] not in have] + extra
    for users in (int(u) for u in args.users.split(",") if u):
        points = [p for p in points if p.get("users_requested") != users]
        points.append(run_point(users, args))
        points.sort(key=lambda p: p["users_requested"])
        result = {"points": points, "worst_growth": worst_growth(points), "cpu_count": os.cpu_count()}
        if args.md:
            write_md(Path(args.md), result, args.note)
    result = {"points": points, "worst_growth": worst_growth(points), "cpu_count": os.cpu_count()}
    if args.md:
        write_md(Path(args.md), result, args.note)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
