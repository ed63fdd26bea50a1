"""The streaming encoder: causal HD-RepSSA, chunk-wise evaluation equal to the full
utterance's, the cached conv front with positional offsets, options and errors."""

import math

import pytest
import torch
from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.errors import InputError, OptionError
from espnet_imlspike.neurons import SpikingNeuron
from espnet_imlspike.streaming.cache import StreamState
from espnet_imlspike.streaming.causal_attention import causal_weights
from espnet_imlspike.streaming.encoder import IMLSpikeformerStreamingEncoder, causal_pairs
from espnet_imlspike.streaming.front import ChunkedFront

SMALL = dict(output_size=32, attention_heads=2, linear_units=64, num_blocks=2, timesteps=4)


def calibrated(dtype=torch.float64, seed=0, **options):
    """A small streaming encoder whose IMLS thresholds saw a few training batches."""
    torch.manual_seed(seed)
    encoder = IMLSpikeformerStreamingEncoder(20, **{**SMALL, **options}).to(dtype)
    encoder.train()
    for _ in range(3):
        encoder(torch.randn(3, 90, 20, dtype=dtype), torch.tensor([90, 70, 50]))
    return encoder.eval()


class SpikeLog:
    """Every spiking neuron's output, per layer, in call order."""

    def __init__(self, encoder):
        self.spikes = {}
        self.handles = [
            module.register_forward_hook(self.hook(name))
            for name, module in encoder.named_modules() if isinstance(module, SpikingNeuron)
        ]

    def hook(self, name):
        def record(module, inputs, output):
            self.spikes.setdefault(name, []).append(output.detach())
        return record

    def per_layer(self):
        for handle in self.handles:
            handle.remove()
        return {name: torch.cat(parts, dim=1) for name, parts in self.spikes.items()}


def chunked(encoder, feats, chunk):
    """Encode ``feats`` (1, L, D) in chunks of ``chunk`` frames through ESPnet's contract."""
    state, outputs = None, []
    for start in range(0, feats.size(1), chunk):
        piece = feats[:, start:start + chunk]
        final = start + chunk >= feats.size(1)
        out, lengths, state = encoder(piece, torch.full((piece.size(0),), piece.size(1)),
                                      state, is_final=final, infer_mode=True)
        assert lengths.tolist() == [out.size(1)] * out.size(0)
        assert (state is None) == final
        outputs.append(out)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("attention,left_context", [
    ("hd_repssa_softmax", 0), ("hd_repssa_linear", 0), ("hd_repssa_softmax", 5),
    ("repssa_softmax", 0),
])
def test_chunks_give_the_full_utterance_spikes_and_outputs(dtype, atol, attention, left_context):
    encoder = calibrated(dtype, attention=attention, left_context=left_context,
                         linear_attention_norm="valid_keys" if "linear" in attention else "none")
    feats = torch.randn(1, 131, 20, dtype=dtype)
    log = SpikeLog(encoder)
    with torch.no_grad():
        full, lengths, _ = encoder(feats, torch.tensor([131]))
    reference = log.per_layer()
    assert full.size(1) == lengths.item() == 32
    for chunk in (1, 37) if dtype == torch.float64 and left_context else (16, 37, 131):
        log = SpikeLog(encoder)
        out = chunked(encoder, feats, chunk)
        spikes = log.per_layer()
        for name, expected in reference.items():
            assert torch.equal(spikes[name], expected), (chunk, name)
        assert out.shape == full.shape
        torch.testing.assert_close(out, full, atol=atol, rtol=0)


def test_chunks_are_cheap_on_state_and_end_cleanly():
    encoder = calibrated(left_context=3)
    feats = torch.randn(1, 60, 20, dtype=torch.float64)
    state = encoder.init_stream()
    for start in range(0, 60, 8):
        encoder.encode_chunk(feats[:, start:start + 8], state, is_final=start + 8 >= 60)
        assert all(cache.frames() <= 2 for cache in state.layers)  # left_context - 1
        assert state.features is None or state.features.size(1) < 7 + 4
    assert state.emitted == 14 and state.features is None


def test_a_query_never_sees_the_future():
    encoder = calibrated()
    feats = torch.randn(1, 100, 20, dtype=torch.float64)
    changed = feats.clone()
    changed[:, 60:] = torch.randn(1, 40, 20, dtype=torch.float64) * 3
    with torch.no_grad():
        a, _, _ = encoder(feats, torch.tensor([100]))
        b, _, _ = encoder(changed, torch.tensor([100]))
    # output frame i reads input frames 4i .. 4i + 6: frames 0..13 end before frame 60
    assert torch.equal(a[:, :14], b[:, :14])
    assert not torch.allclose(a[:, 14:], b[:, 14:])


def test_causal_weights_by_hand():
    phi, d_k = 0.75, 4
    scores = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]],
                          dtype=torch.float64)
    pos = torch.arange(3)
    valid = torch.tensor([[True, True, True]])
    weights = causal_weights(scores, pos, pos, valid, "softmax", phi, d_k)
    for i in range(3):
        logits = [scores[0, 0, i, j].item() * phi ** (i - j) / math.sqrt(d_k)
                  for j in range(i + 1)]
        expected = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
        torch.testing.assert_close(weights[0, 0, i, :i + 1], expected)
        assert torch.all(weights[0, 0, i, i + 1:] == 0)
    linear = causal_weights(scores, pos, pos, valid, "linear", phi, d_k, "valid_keys",
                            left_context=2)
    assert linear[0, 0, 2].tolist() == [0.0, 8.0 * phi / 2, 9.0 / 2]
    # a chunk's rows equal the full map's rows: queries 1..2 against keys 0..2
    rows = causal_weights(scores[:, :, 1:], pos[1:], pos, valid, "softmax", phi, d_k)
    torch.testing.assert_close(rows, weights[:, :, 1:], atol=0, rtol=0)


def test_batched_streams_equal_single_ones():
    encoder = calibrated()
    feats = torch.randn(2, 48, 20, dtype=torch.float64)
    both = chunked(encoder, feats, 12)
    for index in range(2):
        alone = chunked(encoder, feats[index:index + 1], 12)
        torch.testing.assert_close(both[index:index + 1], alone, atol=1e-12, rtol=0)


@pytest.mark.parametrize("input_layer", ["conv2d", "conv2d2", "conv2d6", "conv2d8", "linear"])
def test_the_front_caches_input_frames_and_offsets_positions(input_layer):
    encoder = calibrated(input_layer=input_layer)
    feats = torch.randn(1, 97, 20, dtype=torch.float64)
    with torch.no_grad():
        full = encoder.embed(feats) if input_layer == "linear" else encoder.embed(feats, None)[0]
        for chunk in (1, 9, 97) if input_layer == "conv2d" else (5, 9):
            state, front, parts = StreamState(0, 0), ChunkedFront(encoder.embed, input_layer), []
            for start in range(0, 97, chunk):
                out, _ = front(state, feats[:, start:start + chunk], start + chunk >= 97)
                parts.append(out)
            torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-12, rtol=0)


def test_same_parameters_as_the_full_attention_encoder():
    streaming = IMLSpikeformerStreamingEncoder(20, **SMALL)
    full = IMLSpikeformerEncoder(20, **SMALL)
    ours, theirs = streaming.state_dict(), full.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    full.load_state_dict(ours)  # a checkpoint of one loads into the other


@pytest.mark.parametrize("option,value", [
    ("left_context", -1), ("firing", "multistep"), ("attention", "sdsa3"),
    ("input_layer", "embed"), ("timesteps", 0),
])
def test_options_are_validated_by_name(option, value):
    with pytest.raises(OptionError, match=option):
        IMLSpikeformerStreamingEncoder(20, **{**SMALL, option: value})


def test_misuse_is_refused():
    encoder = calibrated()
    feats = torch.randn(1, 40, 20, dtype=torch.float64)
    with pytest.raises(InputError, match="without padding"):
        encoder(feats, torch.tensor([30]), None, infer_mode=True)
    with pytest.raises(TooShortUttError):  # as the full-utterance encoder
        encoder(feats[:, :6], torch.tensor([6]), None, is_final=True, infer_mode=True)
    encoder.train()
    with pytest.raises(InputError, match="eval mode"):
        encoder(feats, torch.tensor([40]), None, infer_mode=True)


def test_energy_costs_count_causal_pairs():
    assert causal_pairs(5, 0) == 15 and causal_pairs(5, 2) == 1 + 2 * 4
    assert causal_pairs(5, 9) == 15
    encoder = calibrated(left_context=4)
    costs = {c.name: c.flops for c in encoder.layer_costs(131, 32)}
    assert costs["encoders.0.self_attn.context"] == causal_pairs(32, 4) * 32
    assert costs["encoders.1.self_attn.scores"] == 2 * causal_pairs(32, 4) * 32
    ann = {c.name: c.flops for c in encoder.layer_costs(131, 32, ann=True)}
    assert ann["encoders.0.self_attn.scores"] == causal_pairs(32, 4) * 32
