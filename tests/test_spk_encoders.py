"""The speaker encoders' contract: shapes, MFA, padding, bad options and inputs."""


import pytest
import torch

from helpers import REPO, build_spk_model

TONE_SPK = REPO / "conf/spk/tone_demo"


def make_encoder(kind, **overrides):
    from espnet_imlspike.encoders import spk as spk_encoder

    classes = {
        "iml": spk_encoder.IMLSpikeformerSpeakerEncoder,
        "sdt": spk_encoder.SpikeDrivenTransformerSpeakerEncoder,
        "transformer": spk_encoder.TransformerSpeakerEncoder,
    }
    options = dict(input_size=20, output_size=16, attention_heads=2, linear_units=24,
                   num_blocks=3, dropout_rate=0.0, positional_dropout_rate=0.0)
    if kind != "transformer":
        options["timesteps"] = 4
    options.update(overrides)
    return classes[kind](**options)


def randomise_thresholds(encoder, generator):
    """IMLS running thresholds away from their initial ones (as after training)."""
    for name, buffer in encoder.named_buffers():
        if name.endswith("running_max"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) * 2 + 0.2)


KINDS = ["iml", "sdt", "transformer"]
LENGTH_RULES = {  # input_layer -> (output frames for L, fewest input frames)
    "conv2d2": (lambda n: (n - 1) // 2 - 2, 7),
    "conv2d1": (lambda n: n - 4, 5),
    "conv2d": (lambda n: ((n - 1) // 2 - 1) // 2, 7),
    "conv2d6": (lambda n: ((n - 1) // 2 - 2) // 3, 11),
    "conv2d8": (lambda n: (((n - 1) // 2 - 1) // 2 - 1) // 2, 15),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("input_layer", sorted(LENGTH_RULES))
def test_output_shape_channels_first_and_output_size(kind, input_layer):
    encoder = make_encoder(kind, input_layer=input_layer).eval()
    frames = 53
    out = encoder(torch.randn(3, frames, 20))
    expected_frames = LENGTH_RULES[input_layer][0](frames)
    assert out.shape == (3, 3 * 16, expected_frames)
    assert encoder.output_size() == 48
    single = make_encoder(kind, input_layer=input_layer, mfa=False).eval()
    assert single(torch.randn(2, frames, 20)).shape == (2, 16, expected_frames)
    assert single.output_size() == 16


@pytest.mark.parametrize("kind", KINDS)
def test_mfa_output_is_the_layernorm_of_all_block_outputs(kind):
    generator = torch.Generator().manual_seed(1)
    encoder = make_encoder(kind).eval()
    torch.nn.init.normal_(encoder.ln.weight, generator=generator)
    torch.nn.init.normal_(encoder.ln.bias, generator=generator)
    randomise_thresholds(encoder, generator)
    captured = []
    hooks = [block.register_forward_hook(
        lambda module, args, output: captured.append(
            output[0] if isinstance(output, tuple) else output))
        for block in encoder.encoders]
    x = torch.randn(2, 40, 20, generator=generator)
    out = encoder(x)
    for hook in hooks:
        hook.remove()
    if kind == "sdt":  # T steps folded in the batch, time outermost: mean over steps
        captured = [c.view(4, 2, *c.shape[1:]).mean(0) for c in captured]
    assert len(captured) == 3
    concat = torch.cat(captured, dim=-1)
    mean = concat.mean(-1, keepdim=True)
    var = concat.var(-1, unbiased=False, keepdim=True)
    expected = (concat - mean) / torch.sqrt(var + 1e-12) * encoder.ln.weight + encoder.ln.bias
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)
    # the blocks differ: aggregation is not one block repeated
    assert not torch.allclose(captured[0], captured[-1])


def test_transformer_without_mfa_equals_espnets_transformer_encoder():
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

    ours = make_encoder("transformer", mfa=False).eval()
    stock = TransformerEncoder(20, output_size=16, attention_heads=2, linear_units=24,
                               num_blocks=3, input_layer="conv2d2").eval()
    stock.load_state_dict(ours.state_dict())  # strict: same parameters, same names
    x = torch.randn(2, 33, 20)
    expected, olens, _ = stock(x, torch.tensor([33, 33]))
    torch.testing.assert_close(ours(x), expected.transpose(1, 2))
    assert olens.tolist() == [14, 14]


@pytest.mark.parametrize("kind", ["iml", "sdt"])
def test_spiking_without_mfa_equals_the_asr_encoder(kind):
    from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder, SpikeDrivenTransformerEncoder

    asr_class = IMLSpikeformerEncoder if kind == "iml" else SpikeDrivenTransformerEncoder
    ours = make_encoder(kind, mfa=False, input_layer="conv2d").eval()
    randomise_thresholds(ours, torch.Generator().manual_seed(2))
    asr = asr_class(20, output_size=16, attention_heads=2, linear_units=24, num_blocks=3,
                    input_layer="conv2d", timesteps=4).eval()
    asr.load_state_dict(ours.state_dict())  # strict: the same blocks, neurons and buffers
    x = torch.randn(2, 45, 20)
    expected, _, _ = asr(x, torch.tensor([45, 45]))
    torch.testing.assert_close(ours(x), expected.transpose(1, 2))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mfa", [True, False])
def test_padding_does_not_change_valid_frames_and_padded_frames_are_zero(kind, mfa):
    generator = torch.Generator().manual_seed(3)
    encoder = make_encoder(kind, mfa=mfa).double().eval()
    randomise_thresholds(encoder, generator)
    x = torch.randn(2, 41, 20, generator=generator, dtype=torch.float64)
    short = 26  # the second utterance; frames past it are garbage padding
    batch = encoder(x, torch.tensor([41, short]))
    alone = encoder(x[1:2, :short])
    valid = (short - 1) // 2 - 2
    torch.testing.assert_close(batch[1, :, :valid], alone[0], rtol=1e-10, atol=1e-10)
    assert torch.equal(batch[1, :, valid:], torch.zeros_like(batch[1, :, valid:]))
    torch.testing.assert_close(batch[0], encoder(x[:1])[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("input_layer", ["conv2d2", "conv2d1", "conv2d8"])
def test_too_short_input_names_the_minimum(input_layer):
    from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError

    encoder = make_encoder("iml", input_layer=input_layer).eval()
    minimum = LENGTH_RULES[input_layer][1]
    with pytest.raises(TooShortUttError, match=f"at least {minimum} frames"):
        encoder(torch.randn(1, minimum - 1, 20))
    # a short utterance inside a longer batch has no valid frame (all zero), no error
    out = encoder(torch.randn(2, minimum + 10, 20), torch.tensor([minimum + 10, minimum - 1]))
    assert out[1].abs().sum() == 0 and out[0].abs().sum() > 0
    assert encoder(torch.randn(1, minimum, 20)).shape[-1] == 1


@pytest.mark.parametrize(
    "kind, option, value",
    [
        ("iml", "input_layer", "linear"),
        ("transformer", "input_layer", "conv3d"),
        ("transformer", "attention_heads", 3),
        ("sdt", "num_blocks", 0),
        ("transformer", "linear_units", 0),
        ("iml", "output_size", 0),
        ("transformer", "dropout_rate", 1.0),
        ("iml", "attention_dropout_rate", -0.1),
        ("iml", "timesteps", 0),
        ("iml", "firing", "bursting"),
        ("iml", "attention", "full"),
        ("iml", "momentum", 0.0),
        ("sdt", "leak", 1.5),
        ("sdt", "threshold", 0.0),
    ],
)
def test_bad_config_values_raise_value_error_naming_the_option(kind, option, value):
    with pytest.raises(ValueError, match=option):
        make_encoder(kind, **{option: value})


def test_bad_types_and_inputs_are_rejected():
    from typeguard import TypeCheckError

    with pytest.raises(TypeCheckError):
        make_encoder("transformer", output_size="16")
    encoder = make_encoder("iml").eval()
    with pytest.raises(ValueError, match=r"\(batch, frames, 20\)"):
        encoder(torch.randn(2, 30, 21))
    with pytest.raises(ValueError, match="NaN or Inf"):
        encoder(torch.full((1, 30, 20), float("nan")))
    with pytest.raises(ValueError, match="longer than"):
        encoder(torch.randn(2, 30, 20), torch.tensor([30, 31]))
    with pytest.raises(ValueError, match="one length per utterance"):
        encoder(torch.randn(2, 30, 20), torch.tensor([30]))


@pytest.mark.parametrize("name", ["iml_spikeformer", "transformer", "spike_driven_transformer"])
def test_stock_speaker_model_trains_and_embeds_with_our_encoder(name):
    torch.manual_seed(0)
    model = build_spk_model(TONE_SPK / f"train_spk_{name}_tiny.yaml", spk_num=4)
    speech = torch.randn(4, 8000) * 0.1
    loss, stats, _ = model(speech, torch.full((4,), 8000), torch.tensor([[0], [1], [2], [3]]))
    assert torch.isfinite(loss) and "accuracy" in stats
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    embedding = model(speech, extract_embd=True)
    assert embedding.shape == (4, model.projector.output_size())
