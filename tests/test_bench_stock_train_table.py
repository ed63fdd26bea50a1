"""bench/stock_train.py's report: ratios taken per round to that round's Transformer run,
and the medians over rounds (the GPU runs' tables in bench/README.md come from it)."""

import importlib.util
import statistics

from helpers import REPO


def load_stock_train():
    spec = importlib.util.spec_from_file_location("stock_train", REPO / "bench/stock_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(model, round_index, mean, last100, reserved):
    return {"model": model, "precision": "bf16", "steps": 300, "round": round_index,
            "step_s_mean": mean, "step_s_last100": last100, "one_time_s": 1.0,
            "max_reserved_gib": reserved, "max_allocated_gib": 1.0}


def test_each_round_is_compared_with_its_own_transformer_run_and_medians_are_reported():
    stock_train = load_stock_train()
    means = {1: (0.120, 0.100), 2: (0.100, 0.090), 3: (0.130, 0.091)}  # Transformer, IML
    rows = []
    for r, (transformer, iml) in means.items():
        rows += [row("transformer", r, transformer, transformer, 5.0),
                 row("iml_imls_t6", r, iml, iml * 0.9, 3.0)]
    report = stock_train.table(rows)
    lines = report.splitlines()
    per_round = [line for line in lines if line.startswith("| iml_imls_t6 (round")]
    expected = [iml / transformer for transformer, iml in means.values()]
    assert [line.split(" | ")[4] for line in per_round] == [f"x{x:.2f}" for x in expected]
    summary = next(line for line in lines if line.startswith("| iml_imls_t6 | bf16 |"))
    median = statistics.median(expected)
    assert f"x{median:.2f} ({min(expected):.2f}-{max(expected):.2f})" in summary
    assert "x0.60 (0.60-0.60)" in summary  # reserved memory: 3.0 / 5.0 in every round


def test_a_single_run_has_no_rounds_and_no_summary():
    stock_train = load_stock_train()
    rows = [row("transformer", 1, 0.1, 0.1, 5.0), row("iml_imls_t6", 1, 0.08, 0.07, 3.0)]
    for r in rows:
        del r["round"]
    report = stock_train.table(rows)
    assert "Median over rounds" not in report
    assert "| iml_imls_t6 | bf16 | 300 | 80.0 | x0.80 |" in report
