"""Training and comparison reports: ``report.json`` plus a self-contained ``report.html``.

The JSON is the machine-readable record (dataset statistics, protocol,
metrics, per-epoch history); the HTML is what a person looks at: a metrics
table, training-loss and validation-NDCG curves, original vs regenerated vs
personalized bars, and the DR4SR+ weight histograms. Plots are rendered with
matplotlib into inline PNGs so the page is one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _curves(runs: list[dict]) -> str | None:
    runs = [r for r in runs if r.get("history")]
    if not runs:
        return None
    fig, (ax_loss, ax_ndcg) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        label = run.get("label") or run.get("model", "")
        # the trainer's history: one dict per epoch (0-based) with the loss and validation metrics
        epochs = [h.get("epoch", i) + 1 for i, h in enumerate(run["history"])]
        ax_loss.plot(epochs, [h.get("loss", math.nan) for h in run["history"]], label=label)
        ax_ndcg.plot(epochs, [h.get("ndcg@20", math.nan) for h in run["history"]], label=label)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_ndcg.set(title="validation NDCG@20", xlabel="epoch", ylabel="NDCG@20")
    for ax in (ax_loss, ax_ndcg):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _figure_png(fig)


def _bars(rows: list[dict], metric: str) -> str | None:
    rows = [r for r in rows if metric in r.get("test", {})]
    if len(rows) < 2:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(models) + 2), 3.6))
    for j, variant in enumerate(variants):
        xs, ys = [], []
        for i, model in enumerate(models):
            for r in rows:
                if r["model"] == model and r["variant"] == variant:
                    xs.append(i + j * width)
                    ys.append(r["test"][metric])
        ax.bar(xs, ys, width=width, label=variant)
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(models))], models)
    ax.set(title=f"test {metric}", ylabel=metric)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def _weights(weights: dict) -> str | None:
    if not weights:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for source, summary in weights.items():
        edges, counts = summary.get("edges"), summary.get("counts")
        if not edges or not counts or sum(counts) == 0:
            continue
        total = sum(counts)
        ax.stairs([c / total for c in counts], edges, label=f"{source} (mean {summary.get('mean', 0):.3f})")
    ax.set(title="DR4SR+ learned weights per row source", xlabel="weight", ylabel="share of positions")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


def _table(rows: list[dict]) -> str:
    metrics = sorted({m for r in rows for m in r.get("test", {})}, key=lambda m: (m.split("@")[0], int(m.split("@")[1]) if "@" in m else 0))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    has_sig = any(r.get("significance") for r in rows)
    if has_sig:
        head += "<th>vs original (paired t / Wilcoxon p, NDCG@20)</th>"
    body = []
    for r in rows:
        sd = r.get("test_sd") or {}
        cells = "".join(
            (f"<td>{r['test'][m]:.4f}" + (f" ± {sd[m]:.4f}" if m in sd else "") + "</td>")
            if m in r.get("test", {}) else "<td></td>"
            for m in metrics
        )
        if has_sig:
            sig = r.get("significance") or {}
            cells += (
                f"<td>{sig['t_p']:.3g} / {sig['wilcoxon_p']:.3g}</td>" if "t_p" in sig else "<td>—</td>"
            )
        body.append(
            f"<tr><td>{html.escape(str(r.get('model', '')))}</td>"
            f"<td>{html.escape(str(r.get('variant', '')))}</td>{cells}</tr>"
        )
    return (
        f"<table><thead><tr><th>model</th><th>variant</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _kv_table(title: str, mapping: dict) -> str:
    if not mapping:
        return ""
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v, default=_json_default) if isinstance(v, (dict, list)) else str(v))}</td></tr>"
        for k, v in mapping.items()
    )
    return f"<h2>{html.escape(title)}</h2><table class='kv'>{rows}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}
table.kv th{text-align:left}
table.kv td{text-align:left;font-family:monospace;font-size:.85rem}
img{max-width:100%}
.warning{background:#fff4e5;border-left:4px solid #e67700;padding:.5rem .8rem;margin:.5rem 0}
"""


def result_rows(report: dict) -> list[dict]:
    """The (model, variant, test metrics, significance) rows a report shows in its table;
    a comparison over several seeds shows mean ± sd per model x variant."""
    if len(report.get("seeds") or []) > 1 and report.get("summary"):
        return [
            {"model": r["model"], "variant": r["variant"], "test": r["test_mean"], "test_sd": r["test_sd"],
             "significance": r.get("significance")}
            for r in report["summary"]
        ]
    if report.get("runs"):
        return report["runs"]
    return [
        {
            "model": report.get("model", ""),
            "variant": report.get("variant", ""),
            "test": report.get("test", {}),
            "history": report.get("history", []),
        }
    ]


def _warnings(warnings: list[dict]) -> str:
    """The regenerated data's warnings (models.composition), each naming its parameter."""
    if not warnings:
        return ""
    items = "".join(
        f"<p class='warning'><strong>Warning:</strong> {html.escape(w.get('message', ''))}"
        + (f" <em>(parameter: <code>{html.escape(w['parameter'])}</code>)</em>" if w.get("parameter") else "")
        + "</p>"
        for w in warnings
    )
    return f"<h2>Warnings</h2>{items}"


def _composition(comp: dict) -> str:
    """Rows per source of the training data, their share and ratio to the original rows."""
    if not comp:
        return ""
    base = comp.get("original_rows") or 0
    counts = comp.get("counts", {})
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{n:,}</td><td>{comp.get('shares', {}).get(label, 0):.1%}</td>"
        f"<td>{(n / base if base else 0):.2f}</td><td>{comp.get('mean_items', {}).get(label, 0):.1f}</td></tr>"
        for label, n in counts.items()
    )
    return (
        "<h2>Training rows by source</h2><table><thead><tr><th>source</th><th>rows</th><th>share</th>"
        f"<th>rows per original row ({base:,})</th><th>mean items</th></tr></thead><tbody>{body}</tbody></table>"
        f"<p>{comp.get('short_share', 0):.1%} of the rows hold at most {comp.get('short_items', 2)} items.</p>"
    )


def _row_filters(report: dict) -> str:
    """What the row filter kept, for a train report and for each filtered run of a comparison."""
    found = [(report.get("variant", ""), report["row_filter"])] if report.get("row_filter") else []
    found += [(f"{r.get('model')} / {r.get('variant')} / seed {r.get('seed')}", r["row_filter"])
              for r in report.get("runs", []) if r.get("row_filter")]
    if not found:
        return ""

    def scorer(f: dict) -> str:
        if f.get("by") == "random":
            return "none: drawn at random (the control)"
        s = f.get("scorer") or {}
        origin = (f"job {s['job_id']}" if s.get("job_id") else s.get("from", "reused")) if s.get("reused") else "trained"
        ndcg = (s.get("test") or {}).get("ndcg@20")
        return f"{origin}" + (f", test NDCG@20 {ndcg:.4f}" if ndcg is not None else "")

    def figure(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{html.escape(f.get('by', 'loss'))}</td>"
        f"<td>{f['kept_rows']:,} of {f['regenerated_rows']:,}</td>"
        f"<td>{figure(f.get('threshold'))}</td><td>{figure((f.get('loss_kept') or {}).get('median'))}</td>"
        f"<td>{figure((f.get('loss_dropped') or {}).get('median'))}</td>"
        f"<td>{html.escape(scorer(f))}</td></tr>"
        for label, f in found
    )
    return (
        "<h2>Filter of the regenerated rows</h2><p>The loss filter scores each regenerated row by its mean "
        "cross-entropy under a model of the original rows (the scorer: the original arm) and keeps the rows with the "
        "lowest loss; its control, <code>random</code>, keeps the same share drawn at random (<code>row_filter</code>, "
        "<code>row_filter_keep</code>).</p><table><thead><tr><th>run</th><th>filter</th>"
        "<th>regenerated rows kept</th><th>loss threshold</th><th>median loss kept</th>"
        f"<th>median loss dropped</th><th>scorer</th></tr></thead><tbody>{body}</tbody></table>"
    )


def render_regeneration_html(stats: dict, title: str) -> str:
    """A regeneration's page: its warnings, the rows by source and the mining statistics."""
    patterns = {k: v for k, v in (stats.get("patterns") or {}).items()}
    return "".join([
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        _warnings(stats.get("warnings") or []),
        _composition(stats.get("composition") or {}),
        _kv_table("Patterns and pairs", patterns),
        _kv_table("Regenerated rows", {k: v for k, v in (stats.get("regenerated") or {}).items()}),
        _kv_table("Dataset", stats.get("dataset") or {}),
        _kv_table("Timings (s)", stats.get("timings") or {}),
        "</body></html>",
    ])


def render_html(report: dict) -> str:
    rows = result_rows(report)
    title = report.get("title") or f"DR4SR report: {report.get('model', '')} on {report.get('dataset', {}).get('name', '')}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             _warnings(report.get("warnings") or []),
             "<h2>Test metrics</h2>", _table(rows)]
    if len(report.get("seeds") or []) > 1:
        per_seed = [dict(r, variant=f"{r['variant']} / seed {r['seed']}") for r in report.get("runs", [])]
        parts += [f"<p>Mean ± sd over seeds {report['seeds']}; p-values on per-user NDCG@20 averaged over seeds.</p>",
                  "<h2>Runs per seed</h2>", _table(per_seed)]
    images = [
        ("Original vs regenerated vs personalized", _bars(rows, "ndcg@20")),
        ("Training curves", _curves([dict(r, label=f"{r.get('model')} / {r.get('variant')}") for r in rows])),
        ("Learned weights", _weights(report.get("weights") or {})),
    ]
    for caption, png in images:
        if png:
            parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{png}'>")
    parts.append(_composition(report.get("composition") or {}))
    parts.append(_row_filters(report))
    parts.append(_kv_table("Dataset", report.get("dataset", {})))
    parts.append(_kv_table("Protocol", report.get("protocol", {})))
    if report.get("valid"):
        parts.append(_kv_table("Validation metrics (best epoch)", report["valid"]))
    parts.append(_kv_table("Environment (a seed reproduces this run bit for bit only on the same)",
                           report.get("environment") or {}))
    parts.append("</body></html>")
    return "".join(parts)


def write_report(out_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    _atomic_write(json_path, json.dumps(report, indent=2, default=_json_default).encode())
    _atomic_write(html_path, render_html(report).encode())
    return json_path, html_path
