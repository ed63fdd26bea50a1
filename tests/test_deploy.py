"""Spike-driven inference form: equivalence with the training form, op counts, CLI."""

import numpy as np
import pytest
import torch
import yaml

from helpers import run_python
from espnet_imlspike.deploy.convert import IMLSpikeformerDeployEncoder, convert_encoder
from espnet_imlspike.deploy.modules import FusedHDRepSSA, SynapticLinear, spike_planes
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder, SpikeDrivenTransformerEncoder

SMALL = dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=2)


def trained_encoder(input_size=20, dtype=torch.float32, seed=0, **kwargs):
    """An encoder whose IMLS running thresholds have seen a few training batches."""
    torch.manual_seed(seed)
    encoder = IMLSpikeformerEncoder(input_size, **SMALL, **kwargs).to(dtype)
    encoder.train()
    for _ in range(3):
        encoder(torch.randn(4, 60, input_size, dtype=dtype), torch.tensor([60, 50, 40, 30]))
    return encoder.eval()


def speech_features(count=3):
    """80-dim fbank of generated tone-language speech through ESPnet's frontend."""
    from espnet2.asr.frontend.default import DefaultFrontend

    from tone_corpus import synthesize

    rng = np.random.default_rng(0)
    waves = [synthesize(w, p, rng) for w, p in zip(["abcdef", "fed", "cabba"], [0.8, 1.0, 1.2])]
    waves = waves[:count]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    frontend = DefaultFrontend(fs=16000, n_fft=512, hop_length=160).eval()
    with torch.no_grad():
        feats, feat_lengths = frontend(batch, lengths)
    return feats, feat_lengths


def valid_rows(olens, length):
    return torch.arange(length)[None, :] < olens[:, None]


@pytest.mark.parametrize(
    "attention", ["hd_repssa_softmax", "hd_repssa_linear", "repssa_softmax", "repssa_linear"]
)
@pytest.mark.parametrize("timesteps", [4, 6])
@pytest.mark.parametrize("inputs", ["random", "speech"])
def test_deploy_equals_training_form_fp32(attention, timesteps, inputs):
    if inputs == "speech":
        xs, lengths = speech_features()
        encoder = trained_encoder(80, attention=attention, timesteps=timesteps)
    else:
        encoder = trained_encoder(attention=attention, timesteps=timesteps)
        xs, lengths = torch.randn(3, 70, 20), torch.tensor([70, 55, 31])
    with torch.no_grad():
        expected, olens, _ = encoder(xs, lengths)
        deploy = convert_encoder(encoder, "spike_train")
        got, deploy_olens, _ = deploy(xs, lengths)
    assert torch.equal(olens, deploy_olens)
    rows = valid_rows(olens, expected.size(1))
    assert torch.allclose(got[rows], expected[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(attention="sdsa3"), dict(firing="mls", threshold=0.37)],
    ids=["sdsa3", "mls"],
)
def test_deploy_equals_training_form_other_variants(kwargs):
    encoder = trained_encoder(**kwargs)
    xs, lengths = torch.randn(2, 50, 20), torch.tensor([50, 33])
    with torch.no_grad():
        expected, olens, _ = encoder(xs, lengths)
        got, _, _ = convert_encoder(encoder)(xs, lengths)
    rows = valid_rows(olens, expected.size(1))
    assert torch.allclose(got[rows], expected[rows], rtol=1e-5, atol=1e-6)


def test_fused_qk_equals_the_product_of_projections_with_biases():
    encoder = trained_encoder(dtype=torch.float64)
    trained = encoder.encoders[0].self_attn
    fused = convert_encoder(encoder).encoders[0].self_attn
    x = torch.randint(0, 7, (2, 9, 32)).double()
    q = trained.linear_q(x).view(2, 9, 4, 8).transpose(1, 2)
    k = trained.linear_k(x).view(2, 9, 4, 8).transpose(1, 2)
    expected = q @ k.transpose(-2, -1)  # (X W_Q + b_Q)(X W_K + b_K)^T per head
    head = 2
    wqk = fused.w_qk[head]
    a = x @ wqk @ x.transpose(-2, -1)
    a = a + (x @ fused.q_bias_term[head])[:, :, None]
    a = a + (x @ fused.k_bias_term[head])[:, None, :] + fused.bias_product[head]
    assert torch.allclose(a, expected[:, head], atol=1e-9)
    # W_QK = W_Q,h W_K,h^T (Eq. 12) with W = Linear.weight^T
    rows = slice(16, 24)
    w_q = trained.linear_q.weight[rows].t()
    w_k = trained.linear_k.weight[rows].t()
    assert torch.allclose(wqk, w_q @ w_k.t())


def test_spike_planes_are_the_if_neuron_trains():
    spikes = torch.tensor([0.0, 2.0, 4.0, 1.0])
    planes = spike_planes(spikes, 4)
    assert planes.tolist() == [[0, 1, 1, 1], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert torch.equal(planes.sum(0), spikes)


def test_synaptic_layers_reject_non_spike_input():
    layer = SynapticLinear(3, 2)
    layer.timesteps = 4
    valid = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="spike counts"):
        layer(torch.tensor([[[0.5, 1.0, 2.0], [0.0, 0.0, 1.0]]]), valid)
    with pytest.raises(ValueError, match="spike counts"):
        layer(torch.tensor([[[5.0, 1.0, 2.0], [0.0, 0.0, 1.0]]]), valid)


def test_accumulate_counts_match_spikes_seen_by_the_training_form():
    """ACs of each linear layer = (spikes into it over valid frames) x fan-out."""
    encoder = trained_encoder()
    xs, lengths = torch.randn(2, 60, 20), torch.tensor([60, 37])
    seen = {}
    hooks = []
    olens = ((lengths - 1) // 2 - 1) // 2
    mask = valid_rows(olens, 14)

    def record(name):
        def hook(module, inputs, output):
            seen[name] = float(inputs[0][mask].sum()) * module.out_features
        return hook

    attn_spikes, value_spikes = [], []

    def per_utterance(store):
        def hook(module, inputs, output):
            store.extend(float(x) for x in (output * mask.unsqueeze(-1)).sum((1, 2)))
        return hook

    block = encoder.encoders[0]
    hooks.append(block.attn_input_neuron.register_forward_hook(per_utterance(attn_spikes)))
    hooks.append(
        block.self_attn.value_neuron.register_forward_hook(per_utterance(value_spikes))
    )
    for name, module in encoder.named_modules():
        if name.startswith("encoders.") and isinstance(module, torch.nn.Linear) and not (
            name.endswith("linear_q") or name.endswith("linear_k")
        ):
            hooks.append(module.register_forward_hook(record(name)))
    with torch.no_grad():
        encoder(xs, lengths)
        deploy = convert_encoder(encoder)
        deploy.counter.enabled = True
        deploy(xs, lengths)
    counts = deploy.counter.counts
    assert set(seen) <= set(counts)
    for name, expected in seen.items():
        assert counts[name]["ac"] == expected, name
    # fused attention, per utterance of n valid frames with s input spikes and v value
    # spikes: X W_QK adds H*D per spike, P X^T adds H*n, the bias terms 2H; the
    # weighted sum of values adds n per value spike.
    attn = counts["encoders.0.self_attn"]
    expected_map = sum(
        s * (4 * 32 + 4 * int(n) + 2 * 4) + v * int(n)
        for s, v, n in zip(attn_spikes, value_spikes, olens)
    )
    assert attn["ac"] == expected_map


def test_conv_front_is_counted_as_multiply_accumulates():
    encoder = trained_encoder()
    deploy = convert_encoder(encoder)
    deploy.counter.enabled = True
    frames = 43
    with torch.no_grad():
        deploy(torch.randn(1, frames, 20), torch.tensor([frames]))
    # conv1: (43-3)//2+1 = 21 frames x (20-3)//2+1 = 9 bins x 32 out x 1 in x 9 taps
    # conv2: 10 frames x 4 bins x 32 x 32 x 9; linear: 10 frames x (32*4) x 32
    expected = 21 * 9 * 32 * 9 + 10 * 4 * 32 * 32 * 9 + 10 * 128 * 32
    assert deploy.counter.counts["embed"]["mac"] == expected


def test_multi_level_execution_gives_the_same_output():
    encoder = trained_encoder()
    xs, lengths = torch.randn(2, 40, 20), torch.tensor([40, 25])
    deploy = convert_encoder(encoder)
    with torch.no_grad():
        spike_train, _, _ = deploy(xs, lengths)
        deploy.set_execution("multi_level")
        multi_level, _, _ = deploy(xs, lengths)
    assert torch.allclose(spike_train, multi_level, rtol=1e-5, atol=1e-6)


def test_only_iml_spikeformer_encoders_convert():
    with pytest.raises(TypeError, match="IMLSpikeformerEncoder"):
        convert_encoder(SpikeDrivenTransformerEncoder(20, **SMALL))
    with pytest.raises(ValueError, match="firing"):
        convert_encoder(IMLSpikeformerEncoder(20, **SMALL, firing="multistep"))
    with pytest.raises(ValueError, match="execution"):
        IMLSpikeformerDeployEncoder(20, **SMALL, execution="binary")


def test_deploy_state_dict_holds_fused_weights_not_q_and_k():
    deploy = convert_encoder(trained_encoder())
    keys = deploy.state_dict().keys()
    assert "encoders.0.self_attn.w_qk" in keys
    assert "encoders.0.self_attn.linear_v.synapse.weight" in keys
    assert not any("linear_q" in k or "linear_k" in k for k in keys)
    assert isinstance(deploy.encoders[1].self_attn, FusedHDRepSSA)


@pytest.mark.slow
def test_cli_writes_a_model_that_stock_inference_decodes_identically(tiny_iml_asr, tmp_path):
    exp, test_dir = tiny_iml_asr["exp"], tiny_iml_asr["dirs"]["test"]
    done = run_python(
        ["-m", "espnet_imlspike.bin.deploy", "--asr_train_config", str(exp / "config.yaml"),
         "--asr_model_file", str(exp / "valid.acc.best.pth"),
         "--output_dir", str(tmp_path / "deploy")]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fused W_QK: 2" in done.stdout and "thresholds frozen: 10" in done.stdout
    config = yaml.safe_load((tmp_path / "deploy/config.yaml").read_text())
    assert config["encoder"] == "iml_spikeformer_deploy"
    done = run_python(
        ["-m", "espnet2.bin.asr_inference", "--ngpu", "0",
         "--asr_train_config", str(tmp_path / "deploy/config.yaml"),
         "--asr_model_file", str(tmp_path / "deploy/model.pth"),
         "--data_path_and_name_and_type", f"{test_dir}/wav.scp,speech,sound",
         "--key_file", str(test_dir / "wav.scp"), "--beam_size", "4",
         "--ctc_weight", "0.3", "--batch_size", "1",
         "--output_dir", str(tmp_path / "decode")]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ours = (tmp_path / "decode/1best_recog/text").read_text()
    trained = (tiny_iml_asr["out"] / "decode/tiny/1best_recog/text").read_text()
    assert ours == trained
    assert (tmp_path / "decode/1best_recog/score").read_text() == (
        tiny_iml_asr["out"] / "decode/tiny/1best_recog/score"
    ).read_text()


@pytest.mark.slow
def test_cli_errors_are_clear(tiny_iml_asr, tmp_path):
    exp = tiny_iml_asr["exp"]

    def deploy(config, model):
        return run_python(
            ["-m", "espnet_imlspike.bin.deploy", "--asr_train_config", str(config),
             "--asr_model_file", str(model), "--output_dir", str(tmp_path / "out")]
        )

    missing = deploy(exp / "config.yaml", tmp_path / "nope.pth")
    assert missing.returncode != 0 and "nope.pth: no such file" in missing.stderr
    other = yaml.safe_load((exp / "config.yaml").read_text())
    other["encoder"] = "transformer"
    (tmp_path / "transformer.yaml").write_text(yaml.safe_dump(other))
    wrong = deploy(tmp_path / "transformer.yaml", exp / "valid.acc.best.pth")
    assert wrong.returncode != 0 and "only iml_spikeformer" in wrong.stderr
    bigger = yaml.safe_load((exp / "config.yaml").read_text())
    bigger["encoder_conf"]["num_blocks"] = 3
    (tmp_path / "bigger.yaml").write_text(yaml.safe_dump(bigger))
    mismatch = deploy(tmp_path / "bigger.yaml", exp / "valid.acc.best.pth")
    # the checkpoint's own config.yaml beside it tells (tests/test_bad_inputs.py covers a
    # checkpoint without one: the shapes then tell)
    assert mismatch.returncode == 2 and "encoder_conf differs in ['num_blocks']" in mismatch.stderr
