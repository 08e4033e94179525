"""eval-all's bar chart: every model's metrics with bootstrap intervals, and the paired
differences to the baseline."""

from __future__ import annotations

import math
from pathlib import Path

from compare.report import metric_columns, ratio_k
from recdata.atomic import atomic_file


def render_chart(entries: dict, ks, path: Path, masked: bool) -> bool:
    """Grouped bars: one group per metric, one colour per evaluated model. False if none."""
    ok = {k: e for k, e in entries.items() if e["status"] == "ok"}
    if not ok:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [
        (n, label) for n, label in metric_columns(ks) if any(n in e["metrics"] for e in ok.values())
    ]
    width = 0.8 / len(ok)
    compared = {k: e["vs_baseline"] for k, e in ok.items() if e.get("vs_baseline")}
    sliced = {k: e["metrics_by_slice"] for k, e in ok.items() if e.get("metrics_by_slice")}
    widths = [max(6.0, 1.3 * len(cols))] + [4.5] * bool(compared) + [5.0] * bool(sliced)
    fig, axes = plt.subplots(
        1,
        len(widths),
        figsize=(sum(widths), 4.0),
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    ax = axes[0][0]
    for i, (key, entry) in enumerate(ok.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(cols))]
        values = [entry["metrics"].get(n, math.nan) for n, _ in cols]
        intervals = [
            entry.get("ci95", {}).get(n, [v, v]) for (n, _), v in zip(cols, values, strict=True)
        ]
        errors = [
            [v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
            [hi - v for v, (_, hi) in zip(values, intervals, strict=True)],
        ]
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=key, color=plt.get_cmap("tab10")(i))
    ax.set_xticks(range(len(cols)), [label for _, label in cols])
    ax.set_ylabel("score")
    ax.set_title(
        f"Test split ({'history masked' if masked else 'history not masked'}); "
        "95% bootstrap intervals"
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    if compared:
        _difference_panel(axes[0][1], compared, list(ok), plt.get_cmap("tab10"))
    if sliced:
        _slice_panel(axes[0][-1], sliced, list(ok), plt.get_cmap("tab10"), ratio_k(ks))
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def _difference_panel(ax, compared: dict, order: list[str], colours) -> None:
    """Paired per-user difference to the baseline, with its bootstrap 95% interval."""
    names = list(next(iter(compared.values())))
    width = 0.8 / len(compared)
    for i, (key, diffs) in enumerate(compared.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(names))]
        means = [diffs[n]["mean"] for n in names]
        errors = [
            [m - diffs[n]["ci95"][0] for m, n in zip(means, names, strict=True)],
            [diffs[n]["ci95"][1] - m for m, n in zip(means, names, strict=True)],
        ]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=key, color=colours(order.index(key)))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), [f"Δ{n.upper()}" for n in names])
    ax.set_title("vs baseline: paired per-user difference")
    ax.grid(axis="y", alpha=0.3)


def _slice_panel(ax, sliced: dict, order: list[str], colours, k: int) -> None:
    """NDCG@k of every model on each slice (target popularity, user history)."""
    groups = list(next(iter(sliced.values())))
    width = 0.8 / len(sliced)
    for i, (key, by_slice) in enumerate(sliced.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(groups))]
        values = [by_slice[g].get(f"ndcg@{k}", math.nan) for g in groups]
        ax.bar(xs, values, width, label=key, color=colours(order.index(key)))
    ax.set_xticks(range(len(groups)), groups)
    ax.set_title(f"NDCG@{k} by slice")
    ax.grid(axis="y", alpha=0.3)
