"""Native-encoder parity: what works with ESPnet's ``encoder: transformer`` works with the
switch. The same forward/backward checks ESPnet applies to its own Transformer encoder
(every input layer, intermediate CTC on and off, self-conditioning, output_size, invalid
names), and parameter counts equal to ESPnet's TransformerEncoder for every input layer."""

import pytest
import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder, SpikeDrivenTransformerEncoder
from espnet_imlspike.errors import OptionError

INPUT_LAYERS = ["linear", "conv2d", "conv2d1", "conv2d2", "conv2d6", "conv2d8", "embed", None]
SIZES = dict(output_size=40, attention_heads=4, linear_units=64, num_blocks=2)
PRESETS = {"iml": IMLSpikeformerEncoder, "sdt": SpikeDrivenTransformerEncoder}


def inputs(input_layer, frames=20):
    if input_layer == "embed":
        return torch.randint(0, 10, (2, frames))
    # ESPnet 202511: input_layer None maps input_size -> output_size with a plain Linear
    return torch.randn(2, frames, 20, requires_grad=True)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("input_layer", INPUT_LAYERS, ids=str)
@pytest.mark.parametrize("interctc_layer_idx, conditioning", [([], False), ([1], False),
                                                                ([1], True)])
def test_forward_backward_like_espnets_transformer(preset, input_layer, interctc_layer_idx,
                                                   conditioning):
    torch.manual_seed(0)
    encoder = PRESETS[preset](
        20, **SIZES, input_layer=input_layer, interctc_layer_idx=interctc_layer_idx,
        interctc_use_conditioning=conditioning,
    )
    reference = TransformerEncoder(
        20, **SIZES, input_layer=input_layer, interctc_layer_idx=interctc_layer_idx,
        interctc_use_conditioning=conditioning,
    )
    assert sum(p.numel() for p in encoder.parameters()) == sum(
        p.numel() for p in reference.parameters())
    x, lengths = inputs(input_layer), torch.tensor([20, 16])
    ctc = None
    if conditioning:
        ctc = CTC(odim=5, encoder_output_size=encoder.output_size())
        # ESPnet's model adds this layer to encoders that condition (espnet_model.py)
        encoder.conditioning_layer = torch.nn.Linear(5, encoder.output_size())
        reference.conditioning_layer = torch.nn.Linear(5, encoder.output_size())
    out, olens, states = encoder(x, lengths, ctc=ctc)
    if interctc_layer_idx:
        out, intermediate = out
        assert [index for index, _ in intermediate] == interctc_layer_idx
        assert intermediate[0][1].shape == out.shape
    else:
        assert not isinstance(out, tuple)
    assert states is None and out.size(1) == int(olens.max())
    ref_out, ref_lens, _ = reference(x, lengths, ctc=ctc) if conditioning else reference(x, lengths)
    ref_out = ref_out[0] if interctc_layer_idx else ref_out
    assert out.shape == ref_out.shape and olens[0] == ref_lens[0]
    out.sum().backward()
    if x.requires_grad:
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_input_layer_none_at_the_model_dimension_is_the_identity():
    """Features that already have the model dimension (e.g. a self-supervised front end)."""
    encoder = IMLSpikeformerEncoder(40, **SIZES, input_layer=None)
    reference = TransformerEncoder(40, **SIZES, input_layer=None)
    assert encoder.embed is None and reference.embed is None
    out, olens, _ = encoder(torch.randn(2, 7, 40), torch.tensor([7, 5]))
    assert out.shape == (2, 7, 40) and olens.tolist() == [7, 5]


def test_intermediate_outputs_are_the_normalised_block_outputs():
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(20, **dict(SIZES, num_blocks=3), interctc_layer_idx=[1, 2],
                                    dropout_rate=0.0, positional_dropout_rate=0.0).eval()
    captured = []
    for block in encoder.encoders:
        block.register_forward_hook(lambda m, i, o: captured.append(o))
    (out, intermediate), _, _ = encoder(torch.randn(1, 30, 20), torch.tensor([30]))
    for (index, value) in intermediate:
        assert torch.allclose(value, encoder.after_norm(captured[index - 1]))
    assert torch.allclose(out, encoder.after_norm(captured[-1]))


@pytest.mark.parametrize("bad", [[0, 1], [1, 2]])
def test_invalid_interctc_layer_idx(bad):
    with pytest.raises(OptionError, match="interctc_layer_idx"):
        IMLSpikeformerEncoder(20, num_blocks=2, interctc_layer_idx=bad)


def test_output_size_and_invalid_input_layer():
    assert IMLSpikeformerEncoder(20, output_size=256).output_size() == 256
    with pytest.raises(ValueError, match="input_layer"):
        IMLSpikeformerEncoder(20, input_layer="fff")


def test_stock_asr_model_with_self_conditioned_intermediate_ctc(tmp_path):
    """ESPnet's ASRTask builds the model, adds the conditioning layer, and trains a step."""
    import yaml
    from espnet2.tasks.asr import ASRTask

    from helpers import TONE_CONF

    import espnet_imlspike.registration as registration

    registration.register_asr()
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", "a", "b", "c", "<sos/eos>"]) + "\n")
    config = yaml.safe_load((TONE_CONF / "train_asr_iml_spikeformer_tiny.yaml").read_text())
    config["encoder_conf"].update(interctc_layer_idx=[1], interctc_use_conditioning=True)
    config["model_conf"]["interctc_weight"] = 0.3
    config.update(token_list=str(tokens), normalize=None)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    model = ASRTask.build_model(ASRTask.get_parser().parse_args(["--config", str(tmp_path / "c.yaml")]))
    assert isinstance(model.encoder.conditioning_layer, torch.nn.Linear)
    speech = torch.randn(2, 8000)
    loss, stats, _ = model(speech, torch.tensor([8000, 6000]),
                           torch.tensor([[2, 3, 4], [3, 2, -1]]), torch.tensor([3, 2]))
    assert torch.isfinite(loss) and "loss_interctc_layer1" in stats
    loss.backward()
    assert model.encoder.conditioning_layer.weight.grad is not None
