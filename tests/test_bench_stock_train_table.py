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


def test_a_pooled_corpus_shares_feature_files_and_keeps_their_shapes(tmp_path):
    """``--pool``: training utterances reuse the pool's files in turn; each key's shape is
    its file's, its text about one token per 30 frames; the valid set is not pooled."""
    import numpy as np

    stock_train = load_stock_train()
    tokens = stock_train.make_corpus(tmp_path, 10, 40, 90, vocab=50, pool=4)
    assert len(tokens.read_text().split()) == 50
    scp = dict(line.split() for line in (tmp_path / "train/feats.scp").read_text().split("\n")
               if line)
    shapes = dict(line.split() for line in
                  (tmp_path / "train/speech_shape").read_text().split("\n") if line)
    text = dict(line.split(maxsplit=1) for line in
                (tmp_path / "train/text").read_text().split("\n") if line)
    assert len(scp) == 10 and len(set(scp.values())) == 4
    assert scp["train000001"] == scp["train000005"] == scp["train000009"]
    for key, path in scp.items():
        frames = np.load(path).shape[0]
        assert shapes[key] == f"{frames},80" and 40 <= frames <= 90
        assert len(text[key].split()) == max(1, frames // 30)
    valid = (tmp_path / "valid/feats.scp").read_text().split()
    assert len(set(valid[1::2])) == 16


def test_the_librispeech_recipe_trains_its_own_configs(tmp_path):
    """``--recipe librispeech`` maps each model to the e18 config and adds the batch bins;
    a model without a LibriSpeech config is refused by name."""
    import pytest

    stock_train = load_stock_train()
    folder, configs, _, vocab, extra = stock_train.RECIPES["librispeech"]
    for name in ("transformer", "iml_imls_t6", "no_encoder_blocks"):
        config = configs[stock_train.MODELS[name][0]]
        assert (folder / config).is_file() and "e18" in config
    assert vocab == 5000 and extra == ["--batch_bins", "8000000"]
    with pytest.raises(SystemExit, match="iml_multistep_t6.*no librispeech config"):
        stock_train.run_model("iml_multistep_t6", "bf16", tmp_path, tmp_path / "t", tmp_path,
                              4, True, recipe="librispeech")
