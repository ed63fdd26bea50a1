"""Stock spk_train / spk_embed_extract on generated speakers, then EER and energy."""


import numpy as np
import pytest
import torch
import yaml

from helpers import REPO

TONE_SPK = REPO / "conf/spk/tone_demo"


@pytest.mark.slow
def test_stock_spk_train_extract_and_score_on_generated_speakers(tmp_path):
    import soundfile
    from espnet2.bin.spk_inference import Speech2Embedding
    from espnet2.train.reporter import Reporter
    from espnet2.utils.eer import tuneThresholdfromScore

    from espnet2.fileio.read_text import read_2columns_text as read_map
    from spk_pipeline import make_speaker_corpus, run_verification

    dirs = make_speaker_corpus(tmp_path, num_speakers=8, train_per_speaker=8,
                               test_per_speaker=5)
    config = TONE_SPK / "train_spk_iml_spikeformer_tiny.yaml"
    result = run_verification(tmp_path, config, TONE_SPK / "decode.yaml", dirs,
                              ["--max_epoch", "4"], tag="iml")
    exp = result["exp"]
    assert yaml.safe_load((exp / "config.yaml").read_text())["encoder"] == "iml_spikeformer"

    # every test utterance embedded, num_eval=2 segments of the 32-dim embedding
    embeddings = dict(np.load(result["embeddings"]))
    wavs = read_map(dirs["test"] / "wav.scp")
    assert set(embeddings) == set(wavs)
    assert all(v.shape == (2, 32) and np.isfinite(v).all() for v in embeddings.values())

    # ESPnet's own validation EER of the chosen checkpoint (same trials, same segments,
    # computed by its trainer) against ours from the extracted embeddings
    state = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    reporter = Reporter()
    reporter.load_state_dict(state["reporter"])
    best = reporter.get_best_epoch("valid", "eer", "min")
    assert (exp / "valid.eer.best.pth").resolve().name == f"{best}epoch.pth"
    trainer_eer = reporter.get_value("valid", "eer", best)
    labels = result["labels"]
    one_trial = 100 / min(labels.sum(), (1 - labels).sum())
    ours = 100 * result["eer"]
    assert abs(ours - trainer_eer) <= one_trial + 1e-6, (ours, trainer_eer)
    distance_scores = []  # ESPnet's scoring: minus the mean distance of unit embeddings
    for key in read_map(dirs["test"] / "trial_label"):
        a, b = (torch.nn.functional.normalize(torch.from_numpy(embeddings[u]), dim=1)
                for u in key.split("*"))
        distance_scores.append(-torch.cdist(a, b).mean().item())
    espnet_eer = tuneThresholdfromScore(np.array(distance_scores), labels, [1, 0.1])[1]
    assert abs(espnet_eer - trainer_eer) <= one_trial + 1e-6
    assert ours < 45.0, ours  # unseen speakers told apart better than chance (50%)

    # the stock Speech2Embedding (spk_inference) on the same crops gives the same vectors
    speech2embedding = Speech2Embedding(exp / "config.yaml", exp / "valid.eer.best.pth")
    utt = sorted(wavs)[0]
    audio, _ = soundfile.read(wavs[utt])
    target = 8000  # 0.5 s, decode.yaml's target_duration
    if len(audio) < target:
        audio = np.pad(audio, (0, target - len(audio) + 1), "wrap")
    for index, start in enumerate(np.linspace(0, len(audio) - target, num=2)):
        crop = audio[int(start): int(start) + target]
        vector = speech2embedding(crop)[0].numpy()
        stored = embeddings[utt][index]
        cosine = vector @ stored / np.linalg.norm(vector) / np.linalg.norm(stored)
        assert cosine > 0.9999, cosine

    # the IMLS running thresholds were trained and saved
    weights = torch.load(exp / "valid.eer.best.pth", map_location="cpu")
    key = "encoder.encoders.0.attn_input_neuron.running_max"
    assert not torch.equal(weights[key], torch.ones_like(weights[key]))

    # the energy-report stage works on the speaker model too (stock SpeakerTask loading)
    import json as _json

    from helpers import run_python

    done = run_python(
        ["-m", "espnet_imlspike.bin.energy_report",
         "--spk_train_config", str(exp / "config.yaml"),
         "--spk_model_file", str(exp / "valid.eer.best.pth"),
         "--data_dir", str(dirs["test"]), "--max_utterances", "3",
         "--output_dir", str(exp / "energy")]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = _json.loads((exp / "energy" / "energy.json").read_text())
    ann, snn = report["models"]
    assert report["utterances"] == 3 and snn["timesteps"] == weights_timesteps(exp)
    assert 0 < snn["energy_mj"] < ann["energy_mj"]
    assert all(0 <= f["rate"] <= 1 for f in report["firing"].values())


def weights_timesteps(exp):
    """T of the trained speaker model, from its config."""
    return yaml.safe_load((exp / "config.yaml").read_text())["encoder_conf"]["timesteps"]
