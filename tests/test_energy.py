"""Energy report: FLOPs by hand, energy with forced rates, paper-size reference, CLI."""

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers import run_python
from espnet_imlspike.deploy.convert import convert_encoder
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.energy.flops import encoder_costs
from espnet_imlspike.energy.hooks import FiringRateRecorder
from espnet_imlspike.energy.report import EnergyConstants, model_energy
from espnet_imlspike.energy.measure import build_report, measure
from espnet_imlspike.neurons import MultiLevelSpikeNeuron

E = EnergyConstants()


def test_ann_flops_of_a_small_model_by_hand():
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

    encoder = TransformerEncoder(20, 8, 2, 16, 2, input_layer="conv2d")
    frames, length = 43, 10
    costs = {c.name: c.flops for c in encoder_costs(encoder, frames, length)}
    # conv 1: 21 x 9 positions x 8 out x 1 in x 9 taps; conv 2: 10 x 4 x 8 x 8 x 9;
    # output linear: 10 frames x (8 channels * 4 bins) x 8
    assert costs["embed.conv.0"] == 21 * 9 * 8 * 9
    assert costs["embed.conv.2"] == 10 * 4 * 8 * 8 * 9
    assert costs["embed.out"] == 10 * 32 * 8
    block = {k.split(".", 2)[2]: v for k, v in costs.items() if k.startswith("encoders.1")}
    assert block == {
        "self_attn.linear_q": 10 * 8 * 8, "self_attn.linear_k": 10 * 8 * 8,
        "self_attn.linear_v": 10 * 8 * 8, "self_attn.linear_out": 10 * 8 * 8,
        "self_attn.scores": 10 * 10 * 8, "self_attn.context": 10 * 10 * 8,
        "feed_forward.w_1": 10 * 8 * 16, "feed_forward.w_2": 10 * 16 * 8,
    }


def test_spiking_flops_fused_and_unfused_by_hand():
    encoder = IMLSpikeformerEncoder(20, output_size=8, attention_heads=2, linear_units=16,
                                    num_blocks=1, input_layer="linear")
    fused = {c.name: (c.flops, c.source) for c in encoder_costs(encoder, 10, 10)}
    assert fused["embed.linear"] == (10 * 20 * 8, None)
    x_in = "encoders.0.attn_input_neuron"
    assert fused["encoders.0.self_attn.x_wqk"] == (2 * 10 * 8 * 8, x_in)
    assert fused["encoders.0.self_attn.scores"] == (2 * 10 * 10 * 8, x_in)
    assert fused["encoders.0.self_attn.context"] == (
        10 * 10 * 8, "encoders.0.self_attn.value_neuron")
    assert fused["encoders.0.feed_forward.w_2"] == (
        10 * 16 * 8, "encoders.0.feed_forward.hidden_neuron")
    unfused = {c.name: c for c in encoder_costs(encoder, 10, 10, fused_qk=False)}
    assert unfused["encoders.0.self_attn.scores"].source is None  # real Q K^T: MAC
    assert unfused["encoders.0.self_attn.linear_q"].flops == 10 * 8 * 8


class TwoSpikes(MultiLevelSpikeNeuron):
    """Every neuron fires exactly 2 of its T = 4 possible spikes: R = 0.5."""

    def forward(self, x, valid=None):
        return torch.full_like(x, 2.0)


def test_energy_with_forced_rates_equals_hand_value():
    encoder = IMLSpikeformerEncoder(16, output_size=8, attention_heads=2, linear_units=16,
                                    num_blocks=2, input_layer="linear", timesteps=4,
                                    attention="hd_repssa_linear")
    for name, module in list(encoder.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name.endswith("neuron"):
                setattr(module, child_name, TwoSpikes(4))
    recorder, lengths, _ = measure(
        encoder, encoder,
        [("a", torch.randn(12, 16)), ("b", torch.randn(7, 16))],
        lambda m, x, n: m(x, n), progress=False,
    )
    assert all(layer.rate == 0.5 for layer in recorder.layers.values())
    report, text = build_report(encoder, recorder, lengths, parameters=1)
    snn, ann = report["models"][1]["energy_mj"], report["models"][0]["energy_mj"]

    def block_flops(n):  # fused form: x_wqk, scores, v, context, out, w1, w2 (AC)
        return 2 * n * 64 + 2 * n * n * 8 + n * 64 + n * n * 8 + n * 64 + 2 * n * 8 * 16

    def ann_flops(n):
        return 4 * n * 64 + 2 * n * n * 8 + 2 * n * 8 * 16

    hand_snn = sum(2 * 4 * 0.5 * block_flops(n) * 0.9 for n in (12, 7)) / 2 / 1e9
    hand_ann = sum(2 * ann_flops(n) * 4.6 for n in (12, 7)) / 2 / 1e9
    assert snn == pytest.approx(hand_snn)
    assert ann == pytest.approx(hand_ann)
    assert report["front_energy_mj"] == pytest.approx(sum(n * 16 * 8 * 4.6 for n in (12, 7))
                                                      / 2 / 1e9)
    assert "| iml_spikeformer | yes |" in text


def test_firing_rates_ignore_padded_frames():
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(16, output_size=16, attention_heads=2, linear_units=32,
                                    num_blocks=1).eval()
    utterance = torch.randn(1, 30, 16)
    with FiringRateRecorder(encoder) as alone, torch.no_grad():
        encoder(utterance, torch.tensor([30]))
    padded = torch.randn(2, 60, 16) * 10
    padded[0, :30] = utterance[0]
    padded[1] = torch.randn(60, 16)
    with FiringRateRecorder(encoder) as batch, torch.no_grad():
        encoder(padded, torch.tensor([30, 60]))
    with FiringRateRecorder(encoder) as other, torch.no_grad():
        encoder(padded[1:], torch.tensor([60]))
    for name, layer in batch.layers.items():
        assert layer.spikes == pytest.approx(alone.layers[name].spikes + other.layers[name].spikes)
        assert layer.frames == alone.layers[name].frames + other.layers[name].frames


def test_paper_aishell_transformer_on_a_5_second_utterance():
    """ESPnet's aishell Transformer encoder (12x256, 2048 units), 5 s at 16 kHz.

    ESPnet's default frontend (n_fft 512, hop 128, centred) gives 626 frames, 155 after
    conv2d subsampling. The paper reports 10.39 mJ; see README for the comparison.
    """
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

    encoder = TransformerEncoder(80, 256, 4, 2048, 12)
    frames = 1 + 5 * 16000 // 128
    length = ((frames - 1) // 2 - 1) // 2
    assert (frames, length) == (626, 155)
    costs = encoder_costs(encoder, frames, length)
    blocks = [c for c in costs if not c.name.startswith("embed.")]
    per_block = 4 * length * 256**2 + 2 * length**2 * 256 + 2 * length * 256 * 2048
    assert sum(c.flops for c in blocks) == 12 * per_block
    energy = model_energy([blocks], {}, 1, E)["energy_mj"]
    assert energy == pytest.approx(12 * per_block * 4.6e-9)
    assert round(energy, 2) == 11.89  # the value quoted in the README
    front = sum(c.flops for c in costs if c.name.startswith("embed."))
    assert round(model_energy([costs], {}, 1, E)["energy_mj"], 2) == round(
        (12 * per_block + front) * 4.6e-9, 2) == 20.90


def test_recorder_rejects_a_model_without_spiking_neurons():
    with pytest.raises(ValueError, match="no spiking neuron layers"):
        FiringRateRecorder(torch.nn.Linear(2, 2))


def test_empty_data_set_is_a_clear_error():
    encoder = IMLSpikeformerEncoder(16, output_size=8, attention_heads=2, linear_units=16,
                                    num_blocks=1)
    with pytest.raises(ValueError, match="no utterances"):
        measure(encoder, encoder, [], lambda m, x, n: m(x, n), progress=False)


def test_neurobench_agrees_with_our_counts_where_definitions_meet():
    pytest.importorskip("neurobench")
    from espnet_imlspike.energy.neurobench_metrics import neurobench_metrics

    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(20, output_size=32, attention_heads=4, linear_units=64,
                                    num_blocks=2)
    encoder.train()
    encoder(torch.randn(4, 60, 20), torch.tensor([60, 50, 40, 30]))
    deploy = convert_encoder(encoder.eval())
    feats = [("a", torch.randn(50, 20)), ("b", torch.randn(37, 20))]
    deploy.counter.enabled = True
    sparsity = []
    for _, x in feats:
        with FiringRateRecorder(deploy) as recorder, torch.no_grad():
            deploy(x[None], torch.tensor([x.size(0)]))
        nonzero = sum(l.nonzero for l in recorder.layers.values())
        outputs = sum(l.outputs for l in recorder.layers.values())
        sparsity.append(1 - nonzero / outputs)
    deploy.counter.enabled = False
    ours_linear_ac = sum(
        kinds["ac"] for name, kinds in deploy.counter.counts.items()
        if name.endswith(("linear_v", "linear_out", "w_1", "w_2"))
    )
    results = neurobench_metrics(
        SimpleNamespace(encoder=deploy), feats, lambda x, n: (x, n)
    )
    ops = results["SynapticOperations"]
    # NeuroBench: binary planes into each SynapticLinear.synapse are ACs, per sample
    assert ops["Effective_ACs"] == pytest.approx(ours_linear_ac / len(feats))
    # NeuroBench averages the sparsity of each batch (here: each utterance)
    assert results["ActivationSparsity"] == pytest.approx(sum(sparsity) / len(sparsity))


@pytest.mark.slow
def test_energy_report_cli_end_to_end(tiny_iml_asr, tmp_path):
    exp = tiny_iml_asr["exp"]
    pair = [str(exp / "config.yaml"), str(exp / "valid.acc.best.pth")]
    done = run_python(
        ["-m", "espnet_imlspike.bin.energy_report",
         "--asr_train_config", pair[0], "--asr_model_file", pair[1],
         "--data_dir", str(tiny_iml_asr["dirs"]["test"]),
         "--output_dir", str(tmp_path / "energy"), "--neurobench", "true",
         "--compare", *pair]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "energy report" in done.stderr  # the progress bar
    report = json.loads((tmp_path / "energy/energy.json").read_text())
    assert report["utterances"] == 6 and report["audio_seconds"] > 0
    ann, snn = report["models"]
    assert ann["snn"] is False and snn["timesteps"] == 4
    assert ann["parameters"] == snn["parameters"]
    assert snn["energy_mj"] == snn["energy_blocks_mj"] < snn["energy_with_front_mj"]
    measured = report["measured_ac"]
    for layer in snn["layers"]:
        if layer["name"].endswith(("linear_v", "linear_out", "w_1", "w_2", "x_wqk")):
            assert layer["estimated_ac"] == pytest.approx(measured[layer["name"]])
        if layer["name"].endswith(("scores", "context")):
            assert measured[layer["name"]] > 0
    bias = sum(v for k, v in measured.items() if k.endswith("bias_terms"))
    assert report["accumulates"]["measured"] == sum(
        v for k, v in measured.items() if not k.startswith("embed"))
    assert bias > 0
    for row in report["neurobench"]["rows"]:  # ours beside NeuroBench's
        if row["neurobench"] is not None:
            assert row["ours"] == pytest.approx(row["neurobench"]), row["quantity"]
    memory = report["memory_model"]["results"]
    assert memory["spike_train_blocks"]["mj_per_second"] > 0
    assert len(report["compare"]["models"]) == 2
    for png in ("firing_rates.png", "attention_maps.png"):
        assert (tmp_path / "energy" / png).stat().st_size > 10_000
    import numpy as np

    per_neuron = np.load(tmp_path / "energy/firing_rates.npz")
    for name, firing in report["firing"].items():
        # the layer rate is the mean of its per-neuron rates (all neurons see every frame)
        assert per_neuron[name].mean() == pytest.approx(firing["rate"])
        assert f"compare1.{name}" in per_neuron  # the compared model (same checkpoint)
    text = (tmp_path / "energy/energy.md").read_text()
    assert "| Transformer (ANN, same size) | no |" in text
    for section in ("## Ours beside NeuroBench", "## Compared models",
                    "## Memory-aware energy", "Counting a multi-level spike"):
        assert section in text


@pytest.mark.slow
def test_energy_report_cli_bad_inputs(tiny_iml_asr, tmp_path):
    exp = tiny_iml_asr["exp"]

    def report(config, model, data):
        return run_python(
            ["-m", "espnet_imlspike.bin.energy_report", "--asr_train_config", str(config),
             "--asr_model_file", str(model), "--data_dir", str(data),
             "--output_dir", str(tmp_path / "out")]
        )

    test_dir = tiny_iml_asr["dirs"]["test"]
    missing = report(exp / "config.yaml", tmp_path / "none.pth", test_dir)
    assert missing.returncode != 0 and "none.pth: no such file" in missing.stderr
    ann = yaml.safe_load((exp / "config.yaml").read_text())
    ann["encoder"] = "transformer"
    (tmp_path / "ann.yaml").write_text(yaml.safe_dump(ann))
    not_its_config = report(tmp_path / "ann.yaml", exp / "valid.acc.best.pth", test_dir)
    assert not_its_config.returncode == 2
    assert "encoder 'iml_spikeformer' vs 'transformer'" in not_its_config.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/wav.scp").write_text("")
    empty = report(exp / "config.yaml", exp / "valid.acc.best.pth", tmp_path / "empty")
    assert empty.returncode != 0 and "lists no utterances" in empty.stderr
    nodir = report(exp / "config.yaml", exp / "valid.acc.best.pth", tmp_path / "nowhere")
    assert nodir.returncode != 0 and "wav.scp: no such file" in nodir.stderr


def test_include_front_adds_exactly_the_front_energy_to_both_models():
    encoder = IMLSpikeformerEncoder(16, output_size=8, attention_heads=2, linear_units=16,
                                    num_blocks=1)
    recorder, lengths, _ = measure(encoder, encoder, [("a", torch.randn(30, 16))],
                                lambda m, x, n: m(x, n), progress=False)
    blocks, _ = build_report(encoder, recorder, lengths, 1)
    with_front, text = build_report(encoder, recorder, lengths, 1, include_front=True)
    for index in range(2):
        assert with_front["models"][index]["energy_mj"] == pytest.approx(
            blocks["models"][index]["energy_mj"] + blocks["front_energy_mj"])
    assert "headline energy_mj in energy.json is with the front" in text
    # both conventions are in every summary table, labelled
    assert "Energy, blocks only (mJ)" in text and "Energy, with conv front (mJ)" in text
    for index in range(2):
        model = with_front["models"][index]
        assert model["energy_blocks_mj"] == pytest.approx(blocks["models"][index]["energy_mj"])
        assert model["energy_with_front_mj"] == pytest.approx(model["energy_mj"])
