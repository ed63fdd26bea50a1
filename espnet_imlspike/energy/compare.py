"""Several models in one report (``energy_report --compare``): labels, one summary
table (Eq. 16-17 and the memory-aware model, front excluded and included) and the
range of each energy across the models."""

from typing import Dict, List, Tuple

FIRING = {"imls": "IMLS", "mls": "MLS", "multistep": "multi-step"}
ATTENTION = {"hd_repssa_softmax": "HD-RepSSA_S", "hd_repssa_linear": "HD-RepSSA_L",
             "repssa_softmax": "RepSSA_S", "repssa_linear": "RepSSA_L", "sdsa3": "SDSA-3"}


def model_label(encoder, fallback: str) -> str:
    """"IMLS, HD-RepSSA_S (HDM)" from an encoder's options, else ``fallback``."""
    options = getattr(encoder, "options", None)
    if options is None or not hasattr(options, "firing"):
        return fallback
    attention = options.attention
    hdm = " (HDM)" if attention.startswith("hd_") else (
        " (no HDM)" if attention.startswith("repssa") else "")
    return (f"{FIRING.get(options.firing, options.firing)}, T={options.timesteps}, "
            f"{ATTENTION.get(attention, attention)}{hdm}")


def _memory(report: Dict, key: str):
    results = report.get("memory_model", {}).get("results", {})
    return results.get(key)


def _fmt(value, digits: str = ".4g") -> str:
    return "" if value is None else format(value, digits)


def compare_rows(entries: List[Tuple[str, Dict]]) -> List[Dict]:
    """One row of numbers per model: (label, build_report's report)."""
    rows = []
    for label, report in entries:
        snn = report["models"][1]
        firing = report["firing"].values()
        silent = sum(f["silent_fraction"] for f in firing) / max(1, len(firing))
        row = {"label": label, "timesteps": snn["timesteps"], "silent_fraction": silent,
               "eq17_blocks_mj": snn["energy_blocks_mj"],
               "eq17_with_front_mj": snn["energy_with_front_mj"],
               "ann_blocks_mj": report["models"][0]["energy_blocks_mj"],
               "ann_with_front_mj": report["models"][0]["energy_with_front_mj"]}
        for semantics in ("spike_train", "multi_level", "ann"):
            for conv in ("blocks", "with_front"):
                result = _memory(report, f"{semantics}_{conv}")
                row[f"memory_{semantics}_{conv}_mj"] = result and result["energy_mj"]
                row[f"memory_{semantics}_{conv}_mj_per_s"] = result and result.get(
                    "mj_per_second")
        rows.append(row)
    return rows


def value_range(rows: List[Dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return (min(values), max(values)) if values else None


def compare_section(entries: List[Tuple[str, Dict]]) -> Tuple[str, Dict]:
    """Markdown section and JSON for ``entries`` = [(label, report)]."""
    rows = compare_rows(entries)
    lines = [
        "## Compared models",
        "",
        "Energy per utterance (mJ) on the same data; Eq. 16-17 and the memory-aware model "
        "(spike trains; the quantised twin where the spikes are multi-level), each with "
        "the convolutional front excluded (blocks only) and included.",
        "",
        "| Model | silent neurons | Eq. 17, blocks only | Eq. 17, with front | memory, "
        "spike trains, blocks only | memory, spike trains, with front | memory, twin, "
        "blocks only | memory, spike trains, mJ per s (blocks only) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['silent_fraction']:.1%} | {_fmt(r['eq17_blocks_mj'])} | "
            f"{_fmt(r['eq17_with_front_mj'])} | {_fmt(r['memory_spike_train_blocks_mj'])} | "
            f"{_fmt(r['memory_spike_train_with_front_mj'])} | "
            f"{_fmt(r['memory_multi_level_blocks_mj'])} | "
            f"{_fmt(r['memory_spike_train_blocks_mj_per_s'])} |")
    first = rows[0]
    lines.append(
        f"| ANN Transformer, same size | | {_fmt(first['ann_blocks_mj'])} | "
        f"{_fmt(first['ann_with_front_mj'])} | {_fmt(first['memory_ann_blocks_mj'])} | "
        f"{_fmt(first['memory_ann_with_front_mj'])} | | "
        f"{_fmt(first['memory_ann_blocks_mj_per_s'])} |")
    ranges = {}
    for key, what in (("eq17_blocks_mj", "Eq. 17, blocks only (mJ/utt)"),
                      ("eq17_with_front_mj", "Eq. 17, with front (mJ/utt)"),
                      ("memory_spike_train_blocks_mj", "memory model, spike trains, blocks "
                                                       "only (mJ/utt)"),
                      ("memory_spike_train_with_front_mj", "memory model, spike trains, with "
                                                           "front (mJ/utt)"),
                      ("memory_spike_train_blocks_mj_per_s", "memory model, spike trains, "
                                                             "blocks only (mJ per s of audio)"),
                      ("memory_multi_level_blocks_mj", "memory model, quantised twin, "
                                                       "blocks only (mJ/utt)")):
        span = value_range(rows, key)
        if span:
            ranges[key] = list(span)
            lines.append(f"\nRange across the models, {what}: {span[0]:.4g} to {span[1]:.4g}")
    return "\n".join(lines) + "\n", {"models": rows, "ranges": ranges}
