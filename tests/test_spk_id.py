"""Closed-set speaker identification: classification rule, label mapping, stock pipeline."""

import json
import math

import numpy as np
import pytest
import torch

from helpers import REPO, run_python

TONE_SPK = REPO / "conf/spk/tone_demo"


class Head(torch.nn.Module):
    """A stand-in for ``model.loss``: a class matrix and optional sub-centre count."""

    def __init__(self, weight, K=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.as_tensor(weight, dtype=torch.float32))
        if K is not None:
            self.K = K


class HeadOnlyModel(torch.nn.Module):
    """A model that fails if it is ever run: only its head is read."""

    def __init__(self, head):
        super().__init__()
        self.loss = head

    def forward(self, *args, **kwargs):
        raise AssertionError("the model must not be run")


# ---------------------------------------------------------------- classification rule


def test_cosine_rule_on_hand_worked_embeddings():
    from espnet_imlspike.scoring.identification import class_scores, head_class_vectors

    # class 0 points along x but is short, class 1 along y and long, class 2 along -x
    classes = head_class_vectors(Head([[0.1, 0.0], [0.0, 5.0], [-3.0, 0.0]]))
    assert classes.shape == (3, 1, 2)
    embeddings = torch.tensor([
        [[2.0, 1.0], [1.0, 0.2]],    # near x: a dot product would pick class 1 (5 > 0.2)
        [[0.0, 0.01], [1.0, 1.0]],   # segments at 90 and 45 degrees
        [[-1.0, 0.0], [-1.0, 0.0]],
    ])
    scores = class_scores(embeddings, classes)
    expected = torch.tensor([
        [(2 / math.sqrt(5) + 1 / math.sqrt(1.04)) / 2,
         (1 / math.sqrt(5) + 0.2 / math.sqrt(1.04)) / 2,
         -(2 / math.sqrt(5) + 1 / math.sqrt(1.04)) / 2],
        [(0 + 1 / math.sqrt(2)) / 2, (1 + 1 / math.sqrt(2)) / 2, -(1 / math.sqrt(2)) / 2],
        [-1.0, 0.0, 1.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(scores, expected)
    assert scores.argmax(1).tolist() == [0, 1, 2]


def test_sub_centres_are_consecutive_rows_and_the_closest_counts():
    from espnet_imlspike.scoring.identification import class_scores, head_class_vectors

    # K=2: rows 0,1 are class 0 (x and -x), rows 2,3 class 1 (y and a near-x vector)
    head = Head([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], K=2)
    classes = head_class_vectors(head)
    assert classes.shape == (2, 2, 2)
    scores = class_scores(torch.tensor([[[-1.0, 0.0]], [[1.0, 0.2]]]), classes)
    # (-1, 0): class 0 via its -x sub-centre (1.0); class 1 best is y (0.0)
    # (1, 0.2): class 1 via (1, 0.1) beats class 0's x
    cos = (1 + 0.02) / (math.sqrt(1.04) * math.sqrt(1.01))
    torch.testing.assert_close(
        scores, torch.tensor([[1.0, 0.0], [1 / math.sqrt(1.04), cos]], dtype=torch.float64))
    assert scores.argmax(1).tolist() == [0, 1]
    with pytest.raises(Exception, match="multiple of K=3"):
        head_class_vectors(Head(torch.zeros(4, 2), K=3))


@pytest.mark.parametrize("name", ["aamsoftmax", "aamsoftmax_sc_topk", "softmax"])
def test_single_segment_predictions_match_espnets_own_heads(name):
    from espnet2.tasks.spk import loss_choices

    from espnet_imlspike.scoring.identification import class_scores, head_class_vectors

    torch.manual_seed(0)
    loss = loss_choices.get_class(name)(nout=16, nclasses=7)
    embeddings = torch.randn(50, 16)
    _, _, espnet_preds = loss(embeddings, None)
    ours = class_scores(embeddings[:, None], head_class_vectors(loss)).argmax(1)
    assert torch.equal(ours, espnet_preds)
    assert len(set(ours.tolist())) > 2  # not a degenerate agreement


# ---------------------------------------------------------------- label mapping and crops


def test_speaker_labels_match_espnets_preprocessor(tmp_path):
    from espnet2.train.preprocessor import SpkPreprocessor

    from espnet_imlspike.scoring.identification import speaker_label_mapping

    spk2utt = tmp_path / "spk2utt"
    # file order, not sorted order (and not numeric order)
    spk2utt.write_text("zed z1 z2\namy a1\nBob b1 b2 b3\n10 t1\n9 n1\n")
    ours = speaker_label_mapping(spk2utt)
    assert ours == {"zed": 0, "amy": 1, "Bob": 2, "10": 3, "9": 4}
    pre = SpkPreprocessor(train=True, target_duration=0.01, spk2utt=str(spk2utt),
                          noise_apply_prob=0.0, rir_apply_prob=0.0)
    assert pre.spk2label == ours and pre.nspk == len(ours)
    for speaker, label in ours.items():  # the integer target the loss saw in training
        data = pre("u", {"speech": np.zeros(400, np.float32), "spk_labels": speaker})
        assert data["spk_labels"].tolist() == [label]


def test_speaker_label_mapping_refuses_ambiguous_files(tmp_path):
    from espnet_imlspike.scoring.identification import (
        IdentificationError,
        speaker_label_mapping,
    )

    (tmp_path / "dup").write_text("a u1\nb u2\na u3\n")
    with pytest.raises(IdentificationError, match="'a' on lines 1 and 3"):
        speaker_label_mapping(tmp_path / "dup")
    (tmp_path / "blank").write_text("a u1\n\nb u2\n")
    with pytest.raises(IdentificationError, match="line 2 is empty"):
        speaker_label_mapping(tmp_path / "blank")
    with pytest.raises(IdentificationError, match="no such file"):
        speaker_label_mapping(tmp_path / "missing")


@pytest.mark.parametrize("length", [37, 160, 161, 1000])
def test_evaluation_crops_match_espnets_preprocessor(length):
    from espnet2.train.preprocessor import SpkPreprocessor

    from espnet_imlspike.scoring.identification import evaluation_crops

    audio = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    pre = SpkPreprocessor(train=False, target_duration=0.01, num_eval=3,
                          noise_apply_prob=0.0, rir_apply_prob=0.0)  # 160 samples
    stock = pre("u*v", {"speech": audio, "speech2": audio[:50], "spk_labels": "1"})
    crops = evaluation_crops(audio, 160, 3)
    assert crops.shape == (3, 160)
    np.testing.assert_array_equal(crops, stock["speech"])
    np.testing.assert_array_equal(evaluation_crops(audio[:50], 160, 3), stock["speech2"])


# ---------------------------------------------------------------- input errors


def write_dir(path, utt2spk, with_utt2spk=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "wav.scp").write_text("".join(f"{u} /nowhere/{u}.wav\n" for u in utt2spk))
    if with_utt2spk:
        (path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in utt2spk.items()))
    return path


def test_identify_names_unseen_speakers_and_missing_files(tmp_path):
    from espnet_imlspike.scoring.identification import IdentificationError, identify

    model = HeadOnlyModel(Head(torch.eye(3)))
    spk2label = {"a": 0, "b": 1, "c": 2}
    data = write_dir(tmp_path / "unseen", {"u1": "a", "u2": "x9", "u3": "bob", "u4": "b"})
    with pytest.raises(IdentificationError, match="not trained on: bob, x9 "):
        identify(model, spk2label, data, 160, 2)
    data = write_dir(tmp_path / "no_u2s", {"u1": "a"}, with_utt2spk=False)
    with pytest.raises(IdentificationError, match="utt2spk: no such file"):
        identify(model, spk2label, data, 160, 2)
    data = write_dir(tmp_path / "partial", {"u1": "a", "u2": "b"})
    (data / "utt2spk").write_text("u1 a\n")
    with pytest.raises(IdentificationError, match=r"1 utterances .* no speaker.*'u2'"):
        identify(model, spk2label, data, 160, 2)
    with pytest.raises(IdentificationError, match="head has 3 classes .* 2 speakers"):
        identify(model, {"a": 0, "b": 1}, data, 160, 2)


def test_cli_errors_for_missing_files(tmp_path, capsys):
    from espnet_imlspike.bin.spk_id_accuracy import main

    config = tmp_path / "config.yaml"
    config.write_text("encoder: transformer\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--spk_train_config", str(config), "--spk_model_file",
              str(tmp_path / "missing.pth"), "--data_dir", str(tmp_path),
              "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "spk_id_accuracy: error: --spk_model_file" in message
    assert "missing.pth: no such file" in message
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- stock pipeline


@pytest.mark.slow
def test_identification_accuracy_of_a_stock_trained_model(tmp_path):
    from espnet2.bin.spk_inference import Speech2Embedding
    from espnet2.train.dataset import ESPnetDataset

    from espnet_imlspike.scoring.identification import evaluation_crops
    from espnet2.fileio.read_text import read_2columns_text as read_map
    from spk_pipeline import collect_stats, make_speaker_corpus, subset_data_dir, train

    dirs = make_speaker_corpus(tmp_path, num_speakers=8, train_per_speaker=8,
                               test_per_speaker=5)
    train_speakers = sorted(set(read_map(dirs["train"] / "utt2spk").values()))
    # held-out utterances of the training speakers (never seen in training)
    sid = subset_data_dir(tmp_path / "source/data/test", tmp_path / "data/sid_test",
                          train_speakers)
    assert not set(read_map(sid / "wav.scp")) & set(read_map(dirs["train"] / "wav.scp"))
    stats = collect_stats(tmp_path, TONE_SPK / "train_spk_iml_spikeformer_tiny.yaml", dirs)
    exp = train(tmp_path, TONE_SPK / "train_spk_iml_spikeformer_tiny.yaml", dirs, stats,
                ["--max_epoch", "12"], tag="iml")
    config, model_file = exp / "config.yaml", exp / "valid.eer.best.pth"

    out = tmp_path / "sid_out"
    done = run_python(["-m", "espnet_imlspike.bin.spk_id_accuracy",
                       "--spk_train_config", str(config), "--spk_model_file", str(model_file),
                       "--data_dir", str(sid), "--output_dir", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "spk_id_accuracy.json").read_text())
    utt2spk = read_map(sid / "utt2spk")
    predictions = report["predictions"]
    assert set(predictions) == set(utt2spk) and report["utterances"] == len(utt2spk) == 20
    assert all(p["reference"] == utt2spk[u] for u, p in predictions.items())
    assert all(p["hypothesis"] in train_speakers for p in predictions.values())
    correct = sum(p["reference"] == p["hypothesis"] for p in predictions.values())
    assert report["correct"] == correct
    assert report["accuracy"] == pytest.approx(100 * correct / 20)
    assert report["classes"] == report["speakers"] == 4 and report["chance"] == 25.0
    assert (report["target_duration"], report["num_eval"]) == (0.5, 2)
    assert f"{report['accuracy']:.2f}%" in (out / "spk_id_accuracy.txt").read_text()
    assert f"{report['accuracy']:.2f}%" in done.stdout
    assert report["accuracy"] >= 50.0, report["accuracy"]  # chance is 25%

    # independent check of a few predictions: the stock Speech2Embedding on the same
    # crops, ESPnet's own head (model.loss) predicting each crop, the training spk2utt
    # order for names; where both crops agree, the CLI must have picked that speaker
    speech2embedding = Speech2Embedding(config, model_file)
    head = speech2embedding.spk_model.loss
    names = [line.split(" ")[0] for line in (dirs["train"] / "spk2utt").read_text().splitlines()]
    dataset = ESPnetDataset([(str(sid / "wav.scp"), "speech", "sound")])
    checked = 0
    for utt in sorted(utt2spk)[::3]:
        crops = evaluation_crops(np.asarray(dataset[utt][1]["speech"]), 8000, 2)
        vectors = torch.cat([speech2embedding(crop) for crop in crops])
        _, _, preds = head(vectors, None)
        if preds[0] == preds[1]:
            assert predictions[utt]["hypothesis"] == names[int(preds[0])], utt
            checked += 1
    assert checked >= 3

    # test speakers the model never saw: a clear error naming them, nothing written
    failed = run_python(["-m", "espnet_imlspike.bin.spk_id_accuracy",
                         "--spk_train_config", str(config), "--spk_model_file",
                         str(model_file), "--data_dir", str(dirs["test"]),
                         "--output_dir", str(tmp_path / "unseen_out")])
    assert failed.returncode != 0
    assert "not trained on: spk01, spk03, spk05, spk07" in failed.stderr
    assert not (tmp_path / "unseen_out").exists()
