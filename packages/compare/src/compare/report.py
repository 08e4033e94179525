"""eval-all's Markdown report: the metric tables, the protocol line, the distilled/baseline ratios
and the paired differences to the baseline."""

from __future__ import annotations

import math

from runkit.metrics import CANDIDATE_METRIC


def metric_columns(ks) -> list[tuple[str, str]]:
    cols = [(f"{m}@{k}", f"{m.upper()}@{k}") for k in ks for m in ("hr", "ndcg")]
    return [*cols, (CANDIDATE_METRIC, "HR@1 of 20")]


def _fmt(value) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )


def ratio_k(ks) -> int:
    """K of the distilled/baseline ratios: 10 when evaluated, else the largest K."""
    return 10 if 10 in ks else max(ks)


def ratios(entries: dict, ks) -> dict[str, float] | None:
    base, dist = entries.get("baseline_student", {}), entries.get("distilled_student", {})
    if base.get("status") != "ok" or dist.get("status") != "ok":
        return None
    k = ratio_k(ks)
    out = {}
    for name in (f"ndcg@{k}", f"hr@{k}"):
        b, d = base["metrics"].get(name), dist["metrics"].get(name)
        out[name] = d / b if b else math.nan
    return out


def _table(entries: dict, field: str, ks) -> list[str]:
    cols = metric_columns(ks)
    lines = [
        "| model | kind | " + " | ".join(label for _, label in cols) + " | source |",
        "|:--|:--|" + "--:|" * len(cols) + ":--|",
    ]
    for key, entry in entries.items():
        if entry["status"] == "ok":
            values = [_fmt(entry[field].get(name)) for name, _ in cols]
            source = entry["source"]
        else:
            values, source = ["—"] * len(cols), "error"
        lines.append(f"| {key} | {entry['kind']} | " + " | ".join(values) + f" | {source} |")
    return lines


def protocol_line(protocol: dict) -> str:
    fr, data, cands = (
        protocol["full_ranking"],
        protocol.get("data", {}),
        protocol.get("candidates", {}),
    )
    masked = (
        "history items masked (unmasked figures below and in the JSON)"
        if fr["mask_history"]
        else "history items not masked"
    )
    text = (
        f"Protocol: {protocol['split']} split, {protocol['num_samples']} samples of "
        f"{data.get('dataset')} (fingerprint {str(data.get('fingerprint'))[:12]}…, "
        f"limit_data_rows {data.get('limit_data_rows')}); full ranking over all "
        f"{data.get('num_items')} items at K = {', '.join(map(str, fr['ks']))}, "
        f"{masked}; ties count against the target"
    )
    if cands.get("num"):
        text += (
            f"; HR@1 of 20 = target ranked first among {cands['num']} stored candidates "
            f"(target + {cands['num'] - 1} unseen items, seed {cands['seed']})"
        )
    return text + "."


def render_markdown(entries: dict, protocol: dict) -> str:
    ks = protocol["full_ranking"]["ks"]
    lines = [
        "# All-model evaluation",
        "",
        *_table(entries, "metrics", ks),
        "",
        protocol_line(protocol),
    ]
    r = ratios(entries, ks)
    if r is not None:
        k = ratio_k(ks)
        shown = ", ".join(
            f"{n.upper()} ×{f'{v:.3f}' if not math.isnan(v) else 'n/a (baseline is 0)'}"
            for n, v in r.items()
        )
        lines += ["", f"Distilled / baseline at K={k}: {shown}."]
    lines += _difference_rows(entries, ks)
    lines += slice_rows(entries, ks, protocol.get("slices"))
    if protocol["full_ranking"]["mask_history"] and any(
        e["status"] == "ok" for e in entries.values()
    ):
        lines += ["", "Without history masking:", "", *_table(entries, "metrics_unmasked", ks)]
    errors = [(k, e) for k, e in entries.items() if e["status"] != "ok"]
    if errors:
        lines += ["", "Errors:"] + [f"- {k}: {e['error']}" for k, e in errors]
    lines += ["", "Checkpoints:"] + [
        f"- {k}: {e.get('checkpoint') or '—'}" for k, e in entries.items()
    ]
    return "\n".join(lines) + "\n"


def _difference_rows(entries: dict, ks) -> list[str]:
    k = ratio_k(ks)
    rows = [(key, e["vs_baseline"]) for key, e in entries.items() if e.get("vs_baseline")]
    if not rows:
        return []
    lines = [
        "",
        f"Against the baseline student: paired per-user difference at K={k} (mean ± SE, bootstrap "
        "95% interval; 'yes' when |mean| > 2 SE):",
        "",
        f"| model | ΔNDCG@{k} | ΔHR@{k} | beyond 2 SE |",
        "|:--|--:|--:|:--|",
    ]
    for key, diffs in rows:
        cells = [_diff_cell(diffs[f"{m}@{k}"]) for m in ("ndcg", "hr")]
        verdict = "yes" if abs(diffs[f"ndcg@{k}"]["mean"]) > 2 * diffs[f"ndcg@{k}"]["se"] else "no"
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {verdict} |")
    return lines


def _diff_cell(d: dict) -> str:
    lo, hi = d["ci95"]
    return f"{d['mean']:+.4f} ± {d['se']:.4f} [{lo:+.4f}, {hi:+.4f}]"


def slice_rows(entries: dict, ks, definition: dict | None) -> list[str]:
    """NDCG@K of each model on each slice, with the paired difference to the baseline ± SE."""
    k = ratio_k(ks)
    ok = {key: e for key, e in entries.items() if e.get("metrics_by_slice")}
    if not ok:
        return []
    groups = list(next(iter(ok.values()))["metrics_by_slice"])
    samples = {g: next(iter(ok.values()))["metrics_by_slice"][g]["samples"] for g in groups}
    lines = [
        "",
        f"By slice: NDCG@{k}, and the paired difference to the baseline "
        "student (± SE; * beyond 2 SE):",
        "",
    ]
    if definition:
        lines[-1:-1] = [f"Slices: {definition['popularity']}; {definition['history']}."]
    lines += ["| model | " + " | ".join(f"{g} (n={samples[g]})" for g in groups) + " |"]
    lines += ["|:--|" + "--:|" * len(groups)]
    for key, entry in ok.items():
        cells = []
        for g in groups:
            cell = _fmt(entry["metrics_by_slice"][g].get(f"ndcg@{k}"))
            diff = entry.get("vs_baseline_by_slice", {}).get(g, {}).get(f"ndcg@{k}")
            if diff:
                star = "*" if abs(diff["mean"]) > 2 * diff["se"] else ""
                cell += f" ({diff['mean']:+.4f} ± {diff['se']:.4f}{star})"
            cells.append(cell)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines
