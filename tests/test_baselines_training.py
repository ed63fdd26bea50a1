"""The baselines' tiny configs train through ESPnet's stock entry points (slow).

A small tone corpus is generated here (each letter a harmonic tone, each speaker its own
pitch), so these tests depend on nothing but ESPnet: ``espnet2.bin.asr_train`` for the
SMLP (LIF, GSU) and VGG-BiLSTM tiny configs, ``asr_inference`` on the trained LIF
model, and ``espnet2.bin.spk_train`` for the Spiking-LEAF speaker model.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ASR_TINY = REPO / "conf/asr/tone_demo"
SPK_TINY = REPO / "conf/spk/tone_demo"
RATE = 16000
LETTERS = "abcd"
PITCH = {"s0": 0.8, "s1": 1.0, "s2": 1.25, "s3": 1.5}

pytestmark = pytest.mark.slow


def run(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def tone_word(word, pitch, rng):
    t = np.arange(int(0.12 * RATE)) / RATE
    pieces = [np.zeros(int(0.05 * RATE))]
    for letter in word:
        f0 = 220.0 * 2 ** (LETTERS.index(letter) / 3) * pitch
        pieces += [sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3)) * 0.2,
                   np.zeros(int(0.03 * RATE))]
    wave = np.concatenate(pieces + [np.zeros(int(0.05 * RATE))])
    return (wave + rng.normal(0, 0.003, wave.shape)).astype(np.float32)


def make_split(root, name, count, rng):
    """Kaldi-style dir: wav.scp, text, utt2spk, spk2utt, category2utt, shape files."""
    import soundfile

    folder = root / name
    (folder / "wav").mkdir(parents=True)
    rows = []
    for i in range(count):
        speaker = f"s{i % len(PITCH)}"
        word = "".join(rng.choice(list(LETTERS), size=rng.integers(2, 5)))
        utt = f"{speaker}-{name}{i:03d}"
        wave = tone_word(word, PITCH[speaker], rng)
        soundfile.write(folder / "wav" / f"{utt}.wav", wave, RATE)
        rows.append((utt, speaker, word, len(wave)))
    rows.sort()

    def write(file, lines):
        (folder / file).write_text("".join(f"{line}\n" for line in lines))

    write("wav.scp", [f"{u} {folder}/wav/{u}.wav" for u, *_ in rows])
    write("text", [f"{u} {w}" for u, _, w, _ in rows])
    write("utt2spk", [f"{u} {s}" for u, s, *_ in rows])
    write("spk2utt", [f"{s} " + " ".join(u for u, t, *_ in rows if t == s)
                      for s in sorted(PITCH)])
    # ESPnet's category iterator reads category2utt next to wav.scp (spk.sh copies it)
    write("category2utt", (folder / "spk2utt").read_text().splitlines())
    write("speech_shape", [f"{u} {n}" for u, *_, n in rows])
    write("text_shape.char", [f"{u} {len(w)}" for u, _, w, _ in rows])
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_corpus")
    rng = np.random.default_rng(0)
    dirs = {name: make_split(root, name, count, rng)
            for name, count in (("train", 24), ("valid", 8), ("test", 4))}
    tokens = root / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", *LETTERS, "<sos/eos>"]) + "\n")
    return root, dirs, tokens


def asr_train(config, corpus, tag):
    root, dirs, tokens = corpus
    exp = root / f"exp_{tag}"
    data = []
    for split in ("train", "valid"):
        data += [f"--{split}_data_path_and_name_and_type", f"{dirs[split]}/wav.scp,speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{dirs[split]}/text,text,text",
                 f"--{split}_shape_file", f"{dirs[split]}/speech_shape",
                 f"--{split}_shape_file", f"{dirs[split]}/text_shape.char"]
    run(["-m", "espnet2.bin.asr_train", "--config", str(config), *data,
         "--token_type", "char", "--token_list", str(tokens), "--use_preprocessor", "true",
         "--ngpu", "0", "--num_workers", "0", "--seed", "0", "--max_epoch", "1",
         "--batch_size", "8", "--fold_length", "80000", "--fold_length", "150",
         "--use_tensorboard", "false", "--output_dir", str(exp)], root)
    assert (exp / "1epoch.pth").exists() and (exp / "valid.acc.best.pth").exists()
    return exp


@pytest.mark.parametrize("name", ["smlp_gsu", "vgg_blstm"])
def test_tiny_asr_baseline_trains_with_stock_asr_train(name, corpus):
    asr_train(ASR_TINY / f"train_asr_{name}_tiny.yaml", corpus, name)


def test_tiny_lif_smlp_trains_and_decodes_with_stock_entry_points(corpus):
    root, dirs, _ = corpus
    exp = asr_train(ASR_TINY / "train_asr_smlp_lif_tiny.yaml", corpus, "smlp_lif")
    out = root / "decode_smlp_lif"
    run(["-m", "espnet2.bin.asr_inference", "--ngpu", "0", "--batch_size", "1",
         "--asr_train_config", str(exp / "config.yaml"),
         "--asr_model_file", str(exp / "valid.acc.best.pth"),
         "--data_path_and_name_and_type", f"{dirs['test']}/wav.scp,speech,sound",
         "--key_file", str(dirs["test"] / "wav.scp"), "--beam_size", "2",
         "--ctc_weight", "0.3", "--output_dir", str(out)], root)
    hyps = (out / "1best_recog" / "text").read_text().splitlines()
    assert len(hyps) == 4  # one line per test utterance (possibly empty after 1 epoch)


def test_tiny_spiking_leaf_trains_with_stock_spk_train(corpus):
    root, dirs, _ = corpus
    valid = dirs["valid"]
    wavs = dict(line.split() for line in (valid / "wav.scp").read_text().splitlines())
    spk = dict(line.split() for line in (valid / "utt2spk").read_text().splitlines())
    shape = dict(line.split() for line in (valid / "speech_shape").read_text().splitlines())
    utts = sorted(wavs)
    pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]][:12]
    trials = root / "trials"
    trials.mkdir()
    key = [f"{a}*{b}" for a, b in pairs]  # ESPnet's SPK validation splits keys at '*'
    for file, column in (("trial.scp", 0), ("trial2.scp", 1)):
        (trials / file).write_text("".join(f"{k} {wavs[p[column]]}\n"
                                           for k, p in zip(key, pairs)))
    (trials / "trial_label").write_text("".join(
        f"{k} {int(spk[a] == spk[b])}\n" for k, (a, b) in zip(key, pairs)))
    (trials / "speech_shape").write_text("".join(
        f"{k} {shape[a]}\n" for k, (a, _) in zip(key, pairs)))
    exp = root / "exp_spiking_leaf"
    train = dirs["train"]
    done = run(["-m", "espnet2.bin.spk_train", "--config",
         str(SPK_TINY / "train_spk_spiking_leaf_tiny.yaml"), "--use_preprocessor", "true",
         "--train_data_path_and_name_and_type", f"{train}/wav.scp,speech,sound",
         "--train_data_path_and_name_and_type", f"{train}/utt2spk,spk_labels,text",
         "--train_shape_file", f"{train}/speech_shape",
         "--valid_data_path_and_name_and_type", f"{trials}/trial.scp,speech,sound",
         "--valid_data_path_and_name_and_type", f"{trials}/trial2.scp,speech2,sound",
         "--valid_data_path_and_name_and_type", f"{trials}/trial_label,spk_labels,text",
         "--valid_shape_file", f"{trials}/speech_shape",
         "--spk2utt", f"{train}/spk2utt", "--spk_num", str(len(PITCH)),
         "--fold_length", "120000",
         "--max_epoch", "1", "--ngpu", "0", "--seed", "0", "--use_tensorboard", "false",
         "--output_dir", str(exp)], root)
    assert (exp / "1epoch.pth").exists() and (exp / "valid.eer.best.pth").exists()
    assert "valid.eer" in done.stderr  # ESPnet's SPK validation ran on the trials
