"""Score outputs for people: the pooled metrics, the metric table rows and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRIC_KEYS = ("1", "5", "10", "1%")


def pooled_metrics(subsets: dict[str, dict]) -> dict:
    """One subset: its metrics. Several (SUES-200 altitudes): query-weighted means of every rate
    (= the metric over all their queries pooled), sizes summed."""
    rows = list(subsets.values())
    if len(rows) == 1:
        return dict(rows[0])
    n = np.array([r["n_queries"] for r in rows], dtype=np.float64)
    mean = lambda values: float(np.dot(n, values) / n.sum())  # noqa: E731
    return {"n_queries": int(n.sum()), "n_gallery": int(sum(r["n_gallery"] for r in rows)),
            "n_queries_without_match": int(sum(r["n_queries_without_match"] for r in rows)),
            "recall": {k: mean([r["recall"][k] for r in rows]) for k in METRIC_KEYS},
            "ap": mean([r["ap"] for r in rows]), "ap_noninterp": mean([r["ap_noninterp"] for r in rows]),
            "approximate": any(r.get("approximate") for r in rows)}


def table_rows(result: dict) -> list[tuple[str, dict]]:
    subsets = result.get("subsets") or {"all": result}
    return [*subsets.items(), *([("pooled", result)] if "subsets" in result else [])]


def _markdown_table(result: dict) -> str:
    lines = ["| subset | queries | gallery | R@1 | R@5 | R@10 | R@1% | AP | AP (non-interp.) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in table_rows(result):
        rates = " | ".join(f"{100 * m['recall'][k]:.2f}" for k in METRIC_KEYS)
        lines.append(f"| {name} | {m['n_queries']} | {m['n_gallery']} | {rates} | "
                     f"{100 * m['ap']:.2f} | {100 * m['ap_noninterp']:.2f} |")
    return "\n".join(lines)


PROTOCOLS = {
    "official": "every gallery folder is ranked, distractor locations included (the benchmarks' "
                "own evaluation scripts)",
    "query_locations": "gallery items whose location has no query are junk (Sample4Geo-style "
                       "re-implementations): higher numbers, not comparable with `official`",
}


def _heads_line(result: dict) -> str:
    recipe = result.get("heads_recipe")
    if recipe is None:
        return ""
    what = ("centring only: fit-heads estimated no candidate better than domain centring"
            if recipe == "centre" else f"`{recipe}`, the candidate fit-heads chose")
    return f"\n- Heads `{result['heads']}`: {what}.\n"


def _distance_line(result: dict) -> str:
    if "dis@1_m" not in result:
        return ""
    from ..retrieval import describe_distances
    return (f"\n- {describe_distances(result)} (great-circle distance from the top-1 item's "
            "location to the query's, as Game4Loc's Dis@1).\n")


def _fusion_words(result: dict, config: dict) -> str:
    """What was fused, in the words of the config's request (`fusion: true` asks for fusion;
    whether it happened depends on the heads)."""
    if result["fusion"]:
        return f"streams fused (weight of stream 1: {result.get('fusion_weight')})"
    if result["heads"] == "none":
        return "no fusion (heads=none: raw descriptors)"
    if not config.get("fusion", True):
        return "no fusion (fusion=false: stream 1 alone)"
    return "no fusion (fusion=true asked for it, but these heads have one stream)"


def write_report(path: Path, result: dict, subsets: dict, config: dict, pictures: list) -> None:
    text = f"""# {result['dataset']} {result['mode']} - heads: {result['heads']}

{_markdown_table(result)}
{_heads_line(result)}{_distance_line(result)}
- Direction: {result['mode']} ({'drone queries -> satellite gallery' if result['mode'] == 'D2S' else 'satellite queries -> drone gallery'}), layers {result['layers']}, {_fusion_words(result, config)}, index `{result['index']}`{' (approximate metrics: goods outside the ANN top-k count as ranked last)' if result.get('approximate') else ' (exact)'}.
- Gallery protocol `{result['gallery_protocol']}`: {PROTOCOLS[result['gallery_protocol']]}.
- Metrics are University-1652's official `evaluate_gpu.py` definitions: gallery ranked by cosine similarity, junk (label -1) dropped; R@K = share of queries whose first correct item is in the top K (queries without any correct item count as misses: {result['n_queries_without_match']} here); R@1% = CMC at 0-based index round(0.01 x gallery size).
- **AP** is the benchmark's trapezoidal AP (sum over correct items of (p_prev + p_i) / 2n): what EM-CVGL and the other baselines report. **AP (non-interp.)** is the mean of precision at each correct item, (i+1)/(r_i+1): what the GeoAlign release computes, so the paper's AP column compares with this one.
{''.join(f'{chr(10)}![retrievals]({Path(p).name})' for p in pictures)}

## Config
```json
{json.dumps(config, indent=2)}
```
"""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
