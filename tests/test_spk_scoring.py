"""Verification scoring (cosine, EER against ESPnet's) and the generated corpus."""

import math

import numpy as np
import pytest


def test_equal_error_rate_on_hand_worked_examples():
    from espnet_imlspike.scoring.verification import equal_error_rate

    # targets 0.9 0.8 0.3, non-targets 0.7 0.2 0.1 0.05: at a threshold in (0.3, 0.7]
    # one target of three is rejected (FRR 1/3) and one non-target of four accepted
    # (FAR 1/4); just below 0.3, FRR = 0 and FAR = 1/4: the curve crosses FAR = FRR on
    # the vertical step at FAR = 1/4
    scores = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.05]
    labels = [1, 1, 1, 0, 0, 0, 0]
    assert equal_error_rate(scores, labels) == pytest.approx(0.25)
    # a tied target/non-target pair: threshold above 0.5 gives (FAR, FRR) = (0, 1/2),
    # at 0.5 it jumps to (1/2, 0); the straight line between crosses FAR = FRR at 1/4
    assert equal_error_rate([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.25)
    # horizontal step: FRR stays 1/3 while FAR goes 0 -> 1/2
    assert equal_error_rate([0.9, 0.8, 0.5, 0.6, 0.3], [1, 1, 1, 0, 0]) == pytest.approx(1 / 3)
    assert equal_error_rate([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 0.0
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0
    with pytest.raises(ValueError, match="target"):
        equal_error_rate([0.1, 0.2], [1, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_error_rate_agrees_with_espnets_eer(seed):
    from espnet2.utils.eer import tuneThresholdfromScore

    from espnet_imlspike.scoring.verification import equal_error_rate

    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(1.0, 1.0, 400), rng.normal(-0.5, 1.0, 1600)])
    labels = np.concatenate([np.ones(400, int), np.zeros(1600, int)])
    ours = equal_error_rate(scores, labels)
    espnet = tuneThresholdfromScore(scores, labels, [1, 0.1])[1] / 100
    assert abs(ours - espnet) <= 1 / 400
    # two unit-variance Gaussians 1.5 apart: EER = Phi(-0.75) = 22.7%
    assert abs(ours - 0.5 * math.erfc(0.75 / math.sqrt(2))) < 0.03


def test_cosine_score_averages_all_segment_pairs():
    from espnet_imlspike.scoring.verification import cosine_score

    enroll = np.array([[3.0, 0.0], [0.0, 2.0]])
    test = np.array([[1.0, 1.0]])
    # cos to (1, 1): both segments 1/sqrt(2)
    assert cosine_score(enroll, test) == pytest.approx(1 / math.sqrt(2))
    assert cosine_score(np.array([1.0, 0.0]), np.array([[0.0, 5.0], [-2.0, 0.0]])) == (
        pytest.approx(-0.5))


def test_trials_cover_every_pair_with_correct_labels(tmp_path):
    from espnet2.fileio.read_text import read_2columns_text as read_map
    from spk_pipeline import write_trials

    utts = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "c2": "C"}
    (tmp_path / "wav.scp").write_text("".join(f"{u} /w/{u}.wav\n" for u in utts))
    (tmp_path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in utts.items()))
    assert write_trials(tmp_path) == 10
    labels = read_map(tmp_path / "trial_label")
    first, second = read_map(tmp_path / "trial.scp"), read_map(tmp_path / "trial2.scp")
    assert list(labels) == list(first) == list(second)
    assert sorted(k for k, v in labels.items() if v == "1") == ["a1*a2", "c1*c2"]
    for key in labels:
        u1, u2 = key.split("*")
        assert first[key] == f"/w/{u1}.wav" and second[key] == f"/w/{u2}.wav"


def test_speaker_corpus_splits_speakers_for_open_set_verification(tmp_path):
    from espnet2.fileio.read_text import read_2columns_text as read_map
    from spk_pipeline import make_speaker_corpus

    dirs = make_speaker_corpus(tmp_path, num_speakers=4, train_per_speaker=2,
                               test_per_speaker=2)
    train_spk = set(read_map(dirs["train"] / "utt2spk").values())
    test_spk = set(read_map(dirs["test"] / "utt2spk").values())
    assert train_spk == {"spk00", "spk02"} and test_spk == {"spk01", "spk03"}
    assert (dirs["train"] / "category2utt").read_text() == (
        dirs["train"] / "spk2utt").read_text()
    assert len(read_map(dirs["test"] / "trial_label")) == 6  # C(4, 2)
