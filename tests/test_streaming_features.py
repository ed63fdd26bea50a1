"""Chunk-wise features equal the full utterance's ESPnet front end (+ global MVN)."""

import types

import numpy as np
import pytest
import torch
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.layers.global_mvn import GlobalMVN
from espnet2.layers.utterance_mvn import UtteranceMVN

from espnet_imlspike.errors import InputError
from espnet_imlspike.streaming.features import StreamingFeatures


def model_with(frontend, normalize):
    """What StreamingFeatures reads of an ESPnetASRModel."""
    model = torch.nn.Module()
    model.frontend, model.normalize = frontend, normalize
    model._extract_feats = types.MethodType(
        lambda self, speech, lengths: self.frontend(speech, lengths), model)
    return model.eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    stats = tmp_path_factory.mktemp("mvn") / "stats.npz"
    x = np.random.default_rng(0).normal(1.0, 2.0, size=(500, 80))
    np.savez(stats, count=np.array(500), sum=x.sum(0), sum_square=(x ** 2).sum(0))
    return model_with(DefaultFrontend(n_fft=512, hop_length=160, fs=16000),
                      GlobalMVN(str(stats)))


@pytest.mark.parametrize("samples", [16000, 12345, 700])
def test_frames_equal_the_full_utterance(model, samples):
    wave = torch.randn(samples, generator=torch.Generator().manual_seed(samples)) * 0.1
    with torch.no_grad():
        full, _ = model._extract_feats(wave[None], torch.tensor([samples]))
        full, _ = model.normalize(full, torch.tensor([full.size(1)]))
    stream = StreamingFeatures(model)
    # 1 sample; 10 ms; a chunk dividing 16000 (ESPnet's own chunker loses the last
    # frames then); 160 ms; longer than the utterance
    for chunk in (1, 160, 1600, 2560, 20000):
        if chunk == 1 and samples > 1000:
            continue
        state, parts = None, []
        for start in range(0, samples, chunk):
            with torch.no_grad():
                feats, state = stream(wave[start:start + chunk], state,
                                      is_final=start + chunk >= samples)
            if feats is not None:
                parts.append(feats)
        got = torch.cat(parts, dim=1)
        assert got.shape == full.shape
        torch.testing.assert_close(got, full, atol=1e-5, rtol=0)


def test_frames_wait_for_their_whole_window(model):
    stream = StreamingFeatures(model)
    feats, state = stream(torch.zeros(256), None, is_final=False)  # n_fft / 2 samples
    assert feats is None
    feats, state = stream(torch.zeros(1), state, is_final=False)
    assert feats.size(1) == 1  # frame 0 (reflected at the start) is now complete
    feats, state = stream(torch.zeros(159), state, is_final=False)
    assert feats.size(1) == 1 and state.next_frame == 2


def test_what_cannot_stream_is_refused(model):
    with pytest.raises(InputError, match="UtteranceMVN"):
        StreamingFeatures(model_with(model.frontend, UtteranceMVN()))
    with pytest.raises(InputError, match="centred STFT"):
        StreamingFeatures(model_with(DefaultFrontend(center=False), None))
    with pytest.raises(InputError, match="single-channel"):
        StreamingFeatures(model)(torch.zeros(2, 100), None, is_final=True)
