"""Every summary table shows the energy with the convolutional front excluded and
included, labelled: the demo's results table (asr_pipeline.comparison_table)."""

from helpers import PYSCRIPTS  # noqa: F401 (puts the recipe scripts on sys.path)


def test_demo_results_table_shows_both_front_conventions():
    from asr_pipeline import comparison_table

    rows = [
        {"tag": "iml_spikeformer_demo", "parameters": 1.5e6, "cer": 10.0, "wer": 20.0,
         "timesteps": 4, "energy_mj": 0.01, "saving": 11.0, "energy_front_mj": 0.2,
         "saving_front": 1.07},
        {"tag": "transformer_demo", "parameters": 1.5e6, "cer": 9.0, "wer": 19.0,
         "energy_mj": 0.11, "saving": 1.0, "energy_front_mj": 0.214, "saving_front": 1.0},
        {"tag": "other", "parameters": 2e6, "cer": 50.0, "wer": 80.0},
    ]
    table = comparison_table(rows).splitlines()
    assert "energy, blocks only (mJ/utt) | saving, blocks only" in table[0]
    assert "energy, with conv front (mJ/utt) | saving, with conv front" in table[0]
    assert table[2].endswith("| 0.01 | x11.00 | 0.2 | x1.07 |")
    assert table[3].endswith("| 0.11 | x1.00 | 0.214 | x1.00 |")
    assert table[4].endswith("| 1 |  |  |  |  |")
    assert all(line.count("|") == table[0].count("|") for line in table)
