"""Generate ``benchmarks/results/quality.md`` from ``quality.jsonl`` (never edit it by hand).

    python benchmarks/quality_table.py            # writes quality.md, prints it
    python benchmarks/quality_table.py --readme   # also refreshes the README's quality table

One table row per cell (dataset, model, loss, variant and the settings that
define an arm): mean ± sd over seeds of the test metrics, the seeds present,
how many runs stopped early, the paper's figure beside ours (the paper trains
with BCE, so only BCE rows have one), and the significance of the difference
to the original arm with the same dataset, model, loss and batching: per seed
a paired t-test over users of test NDCG@20, and pooled over the seeds both
arms share (per-user NDCG@20 averaged over those seeds, then paired t and
Wilcoxon). DR4SR+ rows show the spread of the learned weights. An arm holds
one run per seed: a later run of a seed it already has (a reproduction check)
is counted in the arm column, not pooled.

Contrasts between two arms other than the original (does the filter beat
its random control? the regenerated rows the patterns alone?) are declared in
``contrasts.json`` beside the JSONL and get their own generated section,
tested the same way.

Records written before the tie-aware evaluation (no ``commit`` field) are
listed apart as legacy figures and never compared. The prose in
``quality_notes.md`` (what was tried and why) is appended verbatim.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
# DR4SR_QUALITY_RESULTS redirects the results folder (the harness's own tests use it)
RESULTS = Path(os.environ.get("DR4SR_QUALITY_RESULTS", ROOT / "benchmarks" / "results"))

# paper Table 3 (SASRec/GRU4Rec/FMLP... x orig/DR4SR/DR4SR+), NDCG@20 and Recall@20, BCE
PAPER = {
    ("amazon-beauty", "sasrec"): {"original": (0.0368, 0.0847), "dr4sr": (0.0395, 0.0906), "dr4sr+": (0.0412, 0.0919)},
    ("amazon-sports", "sasrec"): {"original": (0.0194, 0.0449), "dr4sr": (0.0220, 0.0512), "dr4sr+": (0.0235, 0.0525)},
    ("amazon-beauty", "gru4rec"): {"original": (0.0150, 0.0382), "dr4sr": (0.0177, 0.0448), "dr4sr+": (0.0194, 0.0473)},
    ("amazon-sports", "gru4rec"): {"original": (0.0115, 0.0279), "dr4sr": (0.0135, 0.0341), "dr4sr+": (0.0151, 0.0360)},
    ("amazon-beauty", "fmlp"): {"original": (0.0394, 0.0934), "dr4sr": (0.0421, 0.0993), "dr4sr+": (0.0449, 0.1056)},
    ("amazon-sports", "fmlp"): {"original": (0.0217, 0.0524), "dr4sr": (0.0230, 0.0559), "dr4sr+": (0.0253, 0.0597)},
}
VARIANT_ORDER = {"original": 0, "dr4sr": 1, "dr4sr+": 2}


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@functools.cache
def _regeneration_defaults() -> dict[str, Any]:
    from models.config import RegenerationConfig

    return RegenerationConfig().model_dump(mode="json")


def _non_default(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Regeneration settings minus those equal to today's defaults: a run that
    set ``max_pattern_ratio=2.0`` before it became the default is the same arm
    as one that left it at the default."""
    defaults = _regeneration_defaults()
    return {k: v for k, v in (settings or {}).items() if k not in defaults or defaults[k] != v}


def device_class(rec: dict[str, Any]) -> str:
    """Where a run trained: ``cpu`` or the accelerator's name. Runs on different
    devices are different arms (float order differs) and never pair."""
    return rec.get("device") or "cpu"


#: ``num_negatives`` of runs recorded before quality.py wrote the resolved
#: value: the default of that time, unless the run set it in its train settings
NUM_NEGATIVES_BEFORE_RECORDED = 256


def negatives(rec: dict[str, Any]) -> int | None:
    """The sampled softmax's negatives per batch a run trained with (``None``
    for the other losses). A changed default therefore starts a new arm
    instead of silently pooling two settings."""
    if rec.get("loss", "bce") != "sampled_ce":
        return None
    if rec.get("num_negatives") is not None:
        return int(rec["num_negatives"])
    return int((rec.get("train_settings") or {}).get("num_negatives", NUM_NEGATIVES_BEFORE_RECORDED))


def _settings_without(settings: str | dict[str, Any] | None, *keys: str) -> str:
    d = json.loads(settings) if isinstance(settings, str) else dict(settings or {})
    for key in keys:
        d.pop(key, None)
    return json.dumps(d, sort_keys=True)


def row_filter_arm(rec: dict[str, Any]) -> dict[str, Any]:
    """The row filter a run trained with (``{}``: none), by what ran rather
    than how it was asked for: under the ``auto`` default quality.py records
    the resolved filter (``row_filter_resolved``); before it, only runs that
    set ``row_filter=loss`` filtered (``row_filter_keep`` 0.5, the default of
    that time, unless set). An original run has no regenerated rows to filter."""
    if rec.get("variant") == "original":
        return {}
    if "row_filter_resolved" in rec:
        return dict(rec["row_filter_resolved"] or {})
    settings = rec.get("train_settings") or {}
    if settings.get("row_filter") == "loss":
        return {"row_filter": "loss", "row_filter_keep": float(settings.get("row_filter_keep", 0.5))}
    return {}


def _train_settings(rec: dict[str, Any]) -> str:
    """Training settings as part of an arm; ``num_negatives`` is left out, as
    ``negatives`` keys the arm by the resolved value, and so is the loss
    filter as asked for, replaced by the filter that ran (``row_filter_arm``)."""
    settings = json.loads(_settings_without(rec.get("train_settings"), "num_negatives", "row_filter",
                                            "row_filter_keep"))
    return json.dumps({**settings, **row_filter_arm(rec)}, sort_keys=True)


#: Tags that only named settings every record with the tag also carries in
#: ``personalizer_settings``. Once those settings became the default, an
#: untagged run of the default is the same arm, so these tags do not split arms.
SETTINGS_TAGS: dict[str, dict[str, Any]] = {
    "pers-norm-adam-tau10": {"meta_optimizer": "adam", "normalize": True},
}


#: Tags that only named the row filter a run trained with (``row_filter_arm``).
FILTER_TAGS: dict[str, dict[str, Any]] = {
    f"loss-filter{suffix}": {"row_filter": "loss", "row_filter_keep": keep}
    for suffix, keep in (("", 0.5), ("-0.25", 0.25), ("-0.75", 0.75))
}


def arm_tag(rec: dict[str, Any]) -> str | None:
    """The tag as part of the arm: ``None`` for a tag in ``SETTINGS_TAGS``
    whose settings the record carries, or in ``FILTER_TAGS`` whose filter it
    ran (the settings key the arm instead)."""
    tag = rec.get("tag")
    named = SETTINGS_TAGS.get(tag) if tag else None
    if named is not None and all((rec.get("personalizer_settings") or {}).get(k) == v for k, v in named.items()):
        return None
    if tag in FILTER_TAGS and row_filter_arm(rec) == FILTER_TAGS[tag]:
        return None
    return tag


def arm_key(rec: dict[str, Any]) -> tuple:
    """Everything that defines an experiment arm except the seed."""
    return (
        Path(rec["dataset"]).stem, rec["model"], rec.get("loss", "bce"), rec["variant"],
        rec.get("profile"), rec.get("personalizer_profile"), rec.get("ablation", "none"),
        json.dumps(_non_default(rec.get("regeneration_settings")), sort_keys=True),
        rec.get("bucket_chunk", 32), arm_tag(rec),
        json.dumps(rec.get("personalizer_settings") or {}, sort_keys=True),
        _train_settings(rec),
        device_class(rec),
        negatives(rec),
    )


def original_train_settings(settings: str | dict[str, Any] | None) -> str:
    """The training settings an original run shares with an arm: ``finetune``
    and ``row_filter`` (with ``row_filter_keep``) left out, because a second
    phase on the original rows, or a filter of regenerated rows, changes
    nothing when every row is original (the plain original run is that arm's
    baseline); ``num_negatives`` too, compared as ``negatives`` (resolved)."""
    return _settings_without(settings, "finetune", "row_filter", "row_filter_keep", "num_negatives")


#: The names of an arm key's fields, in order (``arm_key``): what a contrast's selector matches.
ARM_FIELDS = ("dataset", "model", "loss", "variant", "profile", "personalizer_profile", "ablation", "regeneration",
              "bucket", "tag", "personalizer", "train", "device", "negatives")
_JSON_FIELDS = ("regeneration", "personalizer", "train")


def describe(key: tuple) -> dict[str, Any]:
    """An arm key as named fields, its JSON-encoded settings decoded."""
    out = dict(zip(ARM_FIELDS, key, strict=True))
    for name in _JSON_FIELDS:
        out[name] = json.loads(out[name])
    return out


def select(arms: dict[tuple, list[dict]], selector: dict[str, Any]) -> tuple | None:
    """The one arm whose fields equal every field the selector names (a field
    it leaves out matches anything); ``None`` when no arm matches. Several
    matches are an error that lists them: a contrast must name its arms."""
    unknown = set(selector) - set(ARM_FIELDS)
    if unknown:
        raise ValueError(f"a contrast names unknown arm fields {sorted(unknown)} (known: {', '.join(ARM_FIELDS)})")
    found = [k for k in arms if all(describe(k)[f] == v for f, v in selector.items())]
    if len(found) > 1:
        raise ValueError(f"the selector {selector} matches {len(found)} arms; name more fields: "
                         + "; ".join(json.dumps({f: v for f, v in describe(k).items() if f not in selector})
                                     for k in found))
    return found[0] if found else None


def render_contrasts(arms: dict[tuple, list[dict]], contrasts: list[dict[str, Any]]) -> list[str]:
    """The declared contrasts between two arms (``contrasts.json``): each arm's
    mean, the difference and the paired tests pooled over the seeds both have."""
    if not contrasts:
        return []
    out = [
        "",
        "## Contrasts between arms",
        "",
        "Declared in `contrasts.json` (each names its two arms by the fields of the table's arm: dataset, model,",
        "loss, variant, ablation, tag, settings...) and computed like the `p (pooled)` column: paired t-test",
        "and Wilcoxon over users of test NDCG@20 averaged over the seeds both arms share; both means are over",
        "those seeds. A missing arm is listed as such. The p-values are not corrected for the number of contrasts.",
        "",
        "| question | dataset | base | arm | base N@20 | arm N@20 | arm − base | seeds | t p | Wilcoxon p | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in contrasts:
        shared = c.get("shared", {})
        keys = {side: select(arms, {**shared, **c[side]}) for side in ("base", "arm")}
        dataset = shared.get("dataset") or c["arm"].get("dataset") or c["base"].get("dataset") or "?"
        label = {side: c.get(f"{side}_label") or json.dumps(c[side]) for side in ("base", "arm")}
        if None in keys.values():
            missing = " and ".join(side for side, k in keys.items() if k is None)
            out.append(f"| {c['question']} | {dataset} | {label['base']} | {label['arm']} | "
                       f"{missing} not recorded yet | | | | | | |")
            continue
        seeds = sorted({r["seed"] for r in arms[keys["base"]]} & {r["seed"] for r in arms[keys["arm"]]})
        # both means over the shared seeds, the ones the test pairs
        base, arm = ([r for r in arms[keys[side]] if r["seed"] in seeds] for side in ("base", "arm"))
        test = pooled_test(arm, base)
        out.append("| " + " | ".join([
            c["question"], dataset, label["base"], label["arm"],
            _fmt([r["test"]["ndcg@20"] for r in base]), _fmt([r["test"]["ndcg@20"] for r in arm]),
            f"{test['diff']:+.4f}" if test else "–", ",".join(map(str, seeds)) or "none shared",
            _p(test["t_p"]) if test else "–", _p(test["w_p"]) if test else "–",
            _regeneration_note(base, arm),
        ]) + " |")
    return out


def _regenerator_cpus(runs: list[dict]) -> set[str]:
    """Where the regenerations of an arm's runs were trained (CPU kernel path or device)."""
    out = set()
    for r in runs:
        env = (r.get("regeneration") or {}).get("environment") or {}
        if r.get("regeneration"):
            out.add(str(env.get("cpu_capability") or env.get("device") or "?"))
    return out


def _regeneration_note(base: list[dict], arm: list[dict]) -> str:
    """A warning where two arms trained on regenerations made on different CPU
    kernel paths (their regenerated rows differ, so the contrast mixes the
    filter with the regeneration)."""
    a, b = _regenerator_cpus(base), _regenerator_cpus(arm)
    if a and b and a != b:
        return (f"regenerations differ ({'/'.join(sorted(a))} against {'/'.join(sorted(b))}: other rows), "
                "not a like-for-like contrast")
    return ""


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _per_user(rec: dict[str, Any]) -> np.ndarray | None:
    path = RESULTS.parent.parent / rec["per_user"] if rec.get("per_user") else None
    if path is None or not path.exists():
        return None
    return np.load(path)["ndcg@20"].astype(np.float64)


def pooled_test(ours: list[dict], base: list[dict]) -> dict[str, Any] | None:
    """Paired tests over users of NDCG@20 averaged over the seeds both arms have."""
    by_seed_ours = {r["seed"]: r for r in ours}
    by_seed_base = {r["seed"]: r for r in base}
    seeds = sorted(set(by_seed_ours) & set(by_seed_base))
    a, b = [], []
    for s in seeds:
        x, y = _per_user(by_seed_ours[s]), _per_user(by_seed_base[s])
        if x is None or y is None or x.shape != y.shape:
            continue
        a.append(x)
        b.append(y)
    if not a:
        return None
    shared = len(a)
    a, b = np.mean(a, 0), np.mean(b, 0)
    diff = a - b
    if not np.any(diff):
        return {"seeds": shared, "t_p": 1.0, "w_p": 1.0, "diff": 0.0}
    return {
        "seeds": shared,
        "t_p": float(stats.ttest_rel(a, b).pvalue),
        "w_p": float(stats.wilcoxon(a, b).pvalue),
        "diff": float(diff.mean()),
    }


def _per_seed(runs: list[dict], base: list[dict]) -> list[str]:
    """'s<seed> <t p>' per run: the test recorded with it, or, for a run recorded
    before its paired original existed, the same test against the base arm's
    run of that seed."""
    base_by_seed = {r["seed"]: r for r in base}
    out = []
    for r in runs:
        if r.get("p_vs_original"):
            out.append(f"s{r['seed']} {_p(r['p_vs_original']['t_p'])}")
        elif r["seed"] in base_by_seed:
            test = pooled_test([r], [base_by_seed[r["seed"]]])
            if test is not None:
                out.append(f"s{r['seed']} {_p(test['t_p'])}")
    return out


def paired_originals(runs: list[dict], records: list[dict]) -> list[dict]:
    """The original runs an arm's seeds were paired with when they were recorded
    (``p_vs_original.original``; for older records, the latest original recorded
    before the run with the same dataset, model, loss, seed, batching and
    training settings, which is what ``quality.py`` pairs with)."""
    by_path = {r.get("per_user"): r for r in records if r["variant"] == "original" and r.get("per_user")}
    out = []
    for run in runs:
        ref = (run.get("p_vs_original") or {}).get("original")
        if ref in by_path:
            out.append(by_path[ref])
            continue
        before = records[: next((i for i, r in enumerate(records) if r is run), len(records))]
        match = next((o for o in reversed(before) if pairs_with(o, run) and o.get("per_user")), None)
        if match is not None:
            out.append(match)
    return out


def pairs_with(original: dict[str, Any], run: dict[str, Any]) -> bool:
    """``original`` is an original run with ``run``'s dataset, model, loss, seed,
    batching, negatives and training settings (``finetune`` aside): its paired
    baseline."""
    return (
        original["variant"] == "original" and original["dataset"] == run["dataset"]
        and original["model"] == run["model"] and original.get("loss", "bce") == run.get("loss", "bce")
        and original.get("seed") == run["seed"]
        and original.get("bucket_chunk", 32) == run.get("bucket_chunk", 32)
        and original_train_settings(original.get("train_settings")) == original_train_settings(run.get("train_settings"))
        and negatives(original) == negatives(run)
        and device_class(original) == device_class(run)
    )


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def _mark(test: dict | None) -> str:
    if not test:
        return ""
    if test["t_p"] < 0.05:
        return " ▲" if test["diff"] > 0 else " ▼"
    return " ="


def _weights(runs: list[dict]) -> str:
    parts = []
    for src in ("original", "pattern", "regenerated"):
        ws = [r["weights"][src] for r in runs if r.get("weights", {}).get(src, {}).get("weighted")]
        if ws:
            parts.append(f"{src[:3]} {np.mean([w['mean'] for w in ws]):.2f}±{np.mean([w['std'] for w in ws]):.2f}")
    return ", ".join(parts) or "–"


def _regenerated_rows(runs: list[dict]) -> str:
    """Each seed's count of regenerated rows: which regeneration it trained on."""
    counts = [(r.get("rows") or {}).get("regenerated") for r in runs]
    return "; ".join(f"{c:,}" if c is not None else "?" for c in counts)


def group_arms(current: list[dict[str, Any]]) -> tuple[dict[tuple, list[dict]], dict[tuple, int]]:
    """Records by arm, one run per seed (a later run of a seed the arm has is
    counted in the second dict, not pooled)."""
    arms: dict[tuple, list[dict]] = defaultdict(list)
    repeats: dict[tuple, int] = defaultdict(int)
    for r in current:
        key = arm_key(r)
        if any(other["seed"] == r["seed"] for other in arms[key]):
            repeats[key] += 1
            continue
        arms[key].append(r)
    return arms, repeats


def render(records: list[dict[str, Any]], notes: str, contrasts: list[dict[str, Any]] | None = None) -> str:
    legacy = [r for r in records if "commit" not in r]
    current = [r for r in records if "commit" in r]
    arms, repeats = group_arms(current)
    out = [
        "# Quality: measured, seeded, significance-tested",
        "",
        "Generated by `python benchmarks/quality_table.py` from `quality.jsonl`; do not edit by hand.",
        "Runs are appended by `benchmarks/quality.py --record` (see its docstring for the protocol:",
        "leave-one-out, full ranking with ties at their expected rank, early stopping on validation",
        "NDCG@20 with patience 20 and at most 1000 epochs, three seeds).",
        "",
        "Columns: test NDCG@20 / Recall@20 / NDCG@10 as mean ± sd over seeds; `paper` = the paper's",
        "NDCG@20 (BCE only); `early` = runs that stopped early out of runs (a capped run is not",
        "comparable); `p (pooled)` = paired t-test over users of NDCG@20 averaged over the seeds",
        "both arms share, against the original arm of the same dataset, model, loss and batching",
        "(▲/▼ significant at 0.05, = not significant); `p per seed` = the same test seed by seed.",
        "One regeneration per dataset and setting serves every seed and model of a session; sessions run on",
        "different machines and their regenerations differ (`regenerated rows` per seed; README, Reproducibility).",
        "",
        "| dataset | model | loss | variant | arm | seeds | NDCG@20 | Recall@20 | NDCG@10 | paper N@20 | early | p (pooled) | p per seed | DR4SR+ weights | epochs | regenerated rows |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def sort_key(item):
        k = item[0]
        return (k[0], k[1], k[2], k[12], str(k[13]), str(k[8]), VARIANT_ORDER.get(k[3], 9), str(k[4]), str(k[5]), k[7], str(k[9]), k[10])

    for key, runs in sorted(arms.items(), key=sort_key):
        dataset, model, loss, variant, profile, pprofile, ablation, settings, bucket, tag, psettings, tsettings, device, neg = key
        runs = sorted(runs, key=lambda r: r["seed"])
        # the original arm with the same batching and training settings: the same tag if it has one
        base_settings = original_train_settings(tsettings)
        base_key = (dataset, model, loss, "original", None, None, "none", "{}", bucket, tag, "{}", base_settings, device, neg)
        base = arms.get(base_key) or arms.get((*base_key[:9], None, "{}", base_settings, device, neg), [])
        base_note = ""
        if not base and variant != "original":
            base = paired_originals(runs, current)
            tags = sorted({str(r.get("tag")) for r in base})
            base_note = f" vs tag {', '.join(tags)}" if base else ""
        pooled = pooled_test(runs, base) if variant != "original" and base else None
        per_seed = [] if variant == "original" else _per_seed(runs, base)
        arm = []
        if profile:
            arm.append(f"regen {profile}")
        if pprofile:
            arm.append(f"pers {pprofile}")
        if psettings != "{}":
            arm.append(psettings.replace("|", "/"))
        if ablation != "none":
            arm.append(ablation)
        if settings != "{}":
            arm.append(settings.replace("|", "/"))
        arm.append(f"bucket {bucket}")
        if neg is not None:
            arm.append(f"{neg} negatives")
        if tsettings != "{}":
            arm.append(tsettings.replace("|", "/"))
        if tag:
            arm.append(f"tag {tag}")
        if device != "cpu":
            arm.append(device)
        if repeats[key]:
            arm.append(f"{repeats[key]} later run(s) of a seed left out")
        paper = PAPER.get((dataset, model), {}).get(variant) if loss == "bce" else None
        early = sum(r.get("stopped") == "early" for r in runs)
        out.append(
            "| " + " | ".join([
                dataset, model, loss, variant, "; ".join(arm), ",".join(str(r["seed"]) for r in runs),
                _fmt([r["test"]["ndcg@20"] for r in runs]) + (_mark(pooled) if pooled else ""),
                _fmt([r["test"]["recall@20"] for r in runs]),
                _fmt([r["test"]["ndcg@10"] for r in runs]),
                f"{paper[0]:.4f}" if paper else "–",
                f"{early}/{len(runs)}",
                (f"{_p(pooled['t_p'])} (W {_p(pooled['w_p'])}){base_note}" if pooled else "–"),
                "; ".join(per_seed) or "–",
                _weights(runs) if variant == "dr4sr+" else "",
                ",".join(str(r["epochs"]) for r in runs),
                _regenerated_rows(runs) if variant != "original" else "",
            ]) + " |"
        )
    out += render_contrasts(arms, contrasts or [])
    if legacy:
        out += [
            "",
            "## Legacy figures (before tie-aware evaluation; one seed; not comparable)",
            "",
            "| dataset | model | variant | profile | epochs | test NDCG@20 | date |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in legacy:
            out.append(
                f"| {Path(r['dataset']).stem} | {r['model']} | {r['variant']} | {r.get('profile') or '–'} | "
                f"{r['epochs']} | {r['test']['ndcg@20']:.4f} | {r.get('date', '–')} |"
            )
    if notes.strip():
        out += ["", notes.strip()]
    return "\n".join(out) + "\n"


README_START = "<!-- quality-table:start (generated by benchmarks/quality_table.py --readme) -->"
README_END = "<!-- quality-table:end -->"


def compact(records: list[dict[str, Any]]) -> str:
    """The README's short table: one line per arm with its mean, the paper's and the pooled p."""
    lines = [
        "| dataset | model | loss | variant | arm | seeds | test NDCG@20 | paper | p vs original |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    full = render(records, "").splitlines()
    for line in full:
        if not line.startswith("| ") or line.startswith("| dataset") or "Legacy" in line:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 16:
            continue
        dataset, model, loss, variant, arm, seeds, n20, _, _, paper, _, pooled = cells[:12]
        lines.append(f"| {dataset} | {model} | {loss} | {variant} | {arm} | {seeds} | {n20} | {paper} | {pooled} |")
    return "\n".join(lines)


def update_readme(records: list[dict[str, Any]]) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"error: README.md lacks the markers {README_START!r} ... {README_END!r}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_START + "\n" + compact(records) + "\n" + README_END + tail)


def main() -> None:
    records = load(RESULTS / "quality.jsonl")
    notes_path = RESULTS / "quality_notes.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    contrasts_path = RESULTS / "contrasts.json"
    contrasts = json.loads(contrasts_path.read_text()) if contrasts_path.exists() else []
    try:
        text = render(records, notes, contrasts)
    except ValueError as err:
        raise SystemExit(f"error: {contrasts_path}: {err}") from None
    (RESULTS / "quality.md").write_text(text)
    if "--readme" in sys.argv[1:]:
        update_readme(records)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
