"""Encoder contract, parameter counts, padding invariance, statistics and bad input."""

import pytest
import torch
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder, SpikeDrivenTransformerEncoder
from espnet_imlspike.encoders.common import subsampled_lengths
from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron

SMALL = dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=2)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "size",
    [
        dict(output_size=256, attention_heads=4, linear_units=2048, num_blocks=12),
        dict(output_size=512, attention_heads=8, linear_units=2048, num_blocks=12),
        dict(SMALL, input_layer="linear"),
        dict(SMALL, input_layer="conv2d6"),
        dict(SMALL, input_layer="conv2d8", normalize_before=False),
    ],
)
@pytest.mark.parametrize("cls", [IMLSpikeformerEncoder, SpikeDrivenTransformerEncoder])
def test_same_parameter_count_as_espnet_transformer(cls, size):
    ours = cls(80, **size)
    stock = TransformerEncoder(80, **size)
    assert count(ours) == count(stock)


@pytest.mark.parametrize("input_layer", ["conv2d", "conv2d6", "conv2d8", "linear"])
def test_output_lengths_match_the_subsampling(input_layer):
    encoder = IMLSpikeformerEncoder(20, **SMALL, input_layer=input_layer).eval()
    for frames in range(encoder.min_input_frames, 40):
        out, olens, states = encoder(torch.randn(1, frames, 20), torch.tensor([frames]))
        assert states is None
        assert out.shape == (1, int(olens[0]), 32) and olens[0] >= 1
    lengths = torch.arange(15, 60)
    assert torch.equal(
        subsampled_lengths(lengths, input_layer),
        torch.tensor(
            [encoder.embed(torch.zeros(1, n, 20), None)[0].size(1)
             if input_layer != "linear" else n for n in lengths.tolist()]
        ),
    )


@pytest.mark.parametrize(
    "firing, attention",
    [
        ("imls", "hd_repssa_softmax"),
        ("imls", "hd_repssa_linear"),
        ("mls", "repssa_softmax"),
        ("imls", "sdsa3"),
        ("multistep", "sdsa3"),
        ("multistep", "hd_repssa_softmax"),
    ],
)
def test_padding_invariance_in_eval(firing, attention):
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(
        16, **SMALL, firing=firing, attention=attention, timesteps=4
    ).double()
    encoder.train()
    encoder(torch.randn(3, 50, 16).double(), torch.tensor([50, 40, 31]))
    encoder.eval()
    utterance = torch.randn(1, 37, 16).double()
    alone, olen, _ = encoder(utterance, torch.tensor([37]))
    for total, position in [(45, 0), (80, 1)]:
        batch = torch.randn(2, total, 16).double() * 5  # padding holds garbage
        batch[position, :37] = utterance[0]
        lengths = torch.tensor([total, total])
        lengths[position] = 37
        padded, olens, _ = encoder(batch, lengths)
        assert int(olens[position]) == int(olen[0])
        assert torch.allclose(padded[position, : int(olen[0])], alone[0], atol=1e-10)


def imls_neurons(encoder):
    return [m for m in encoder.modules() if isinstance(m, InputAwareMultiLevelSpikeNeuron)]


def test_padded_frames_never_influence_thresholds():
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(16, **SMALL, dropout_rate=0.0)
    x = torch.randn(2, 40, 16)
    lengths = torch.tensor([40, 25])
    encoder.train()
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder(x, lengths)
    reference = [n.running_max.clone() for n in imls_neurons(encoder)]
    encoder.load_state_dict(state)
    x[1, 25:] = 1e4
    encoder(x, lengths)
    for neuron, expected in zip(imls_neurons(encoder), reference):
        assert torch.allclose(neuron.running_max, expected)


def test_running_statistics_change_only_in_train_and_eval_is_deterministic():
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(16, **SMALL)
    x, lengths = torch.randn(2, 30, 16), torch.tensor([30, 22])
    encoder.eval()
    before = [n.running_max.clone() for n in imls_neurons(encoder)]
    first = encoder(x, lengths)[0]
    second = encoder(x, lengths)[0]
    assert torch.equal(first, second)
    assert all(torch.equal(n.running_max, b) for n, b in zip(imls_neurons(encoder), before))
    encoder.train()
    encoder(x, lengths)
    changed = [not torch.equal(n.running_max, b) for n, b in zip(imls_neurons(encoder), before)]
    assert all(changed) and len(changed) == 2 * 5


def test_running_thresholds_are_saved_in_the_state_dict():
    encoder = IMLSpikeformerEncoder(16, **SMALL)
    keys = [k for k in encoder.state_dict() if k.endswith("running_max")]
    assert len(keys) == 10
    assert "encoders.0.self_attn.value_neuron.running_max" in keys


@pytest.mark.parametrize("firing", ["imls", "mls", "multistep"])
def test_gradients_reach_every_parameter(firing):
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(16, **SMALL, firing=firing, timesteps=4)
    out, olens, _ = encoder(torch.randn(2, 30, 16) * 3, torch.tensor([30, 20]))
    out.sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_backward_is_finite(dtype):
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(16, **SMALL)
    with torch.autocast("cpu", dtype=dtype):
        out, _, _ = encoder(torch.randn(2, 30, 16), torch.tensor([30, 12]))
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(firing="lif"), "firing"),
        (dict(attention="full"), "attention"),
        (dict(timesteps=0), "timesteps"),
        (dict(attention_heads=3), "attention_heads"),
        (dict(input_layer="conv3d"), "input_layer"),
        (dict(momentum=1.5), "momentum"),
    ],
)
def test_bad_config_values_name_the_option(kwargs, option):
    args = dict(SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=option):
        IMLSpikeformerEncoder(16, **args)


def test_too_short_batch_names_the_minimum_and_short_utterances_get_no_frames():
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(16, **SMALL, input_layer="conv2d6").eval()
    # ESPnet's check_short_utt: conv2d6 needs 11 frames
    with pytest.raises(TooShortUttError, match="at least 11 frames"):
        encoder(torch.randn(1, 10, 16), torch.tensor([10]))
    # a short utterance padded inside a long batch has no output frame and does not
    # change the others (training must not abort on it)
    x = torch.randn(2, 50, 16)
    out, olens, _ = encoder(x, torch.tensor([50, 6]))
    alone, alone_lens, _ = encoder(x[:1], torch.tensor([50]))
    assert olens.tolist() == [alone_lens.item(), 0]
    assert torch.allclose(out[0], alone[0], atol=1e-6)
    encoder.train()
    out, olens, _ = encoder(x, torch.tensor([50, 6]))
    assert olens[1] == 0 and torch.isfinite(out).all()


def test_bad_features_are_rejected():
    encoder = IMLSpikeformerEncoder(16, **SMALL).eval()
    x = torch.randn(1, 20, 16)
    x[0, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        encoder(x, torch.tensor([20]))
    with pytest.raises(ValueError, match="longer than"):
        encoder(torch.randn(2, 20, 16), torch.tensor([20, 21]))
    with pytest.raises(ValueError, match="integer"):
        encoder(torch.randn(1, 20, 16), torch.tensor([20.0]))
    with pytest.raises(ValueError, match="16"):
        encoder(torch.randn(1, 20, 15), torch.tensor([20]))
    with pytest.raises(ValueError, match="ilens"):
        encoder(torch.randn(2, 20, 16), torch.tensor([20]))
