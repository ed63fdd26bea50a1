"""Speaker encoders in ESPnet's SPK task: registration, sizes, contract, stock pipeline."""

import math
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_python, shipped_training_configs

VOX = REPO / "conf/spk/voxceleb"
TONE_SPK = REPO / "conf/spk/tone_demo"
PURELIB = sysconfig.get_paths()["purelib"]

# Table III (VoxCeleb1 speaker identification): config -> the paper's size in M
TABLE_III = {
    f"train_sid_{model}_{size}m.yaml": float(size)
    for model in ("iml_spikeformer", "transformer")
    for size in ("0.60", "1.18", "1.76")
}
# Table IV (speaker verification): IML T=6/T=8 and both baselines at one size
TABLE_IV = [
    "train_mfa_iml_spikeformer_t6.yaml",
    "train_mfa_iml_spikeformer_t8.yaml",
    "train_mfa_transformer.yaml",
    "train_mfa_spike_driven_transformer_t8.yaml",
]
VOXCELEB1_SPEAKERS = 1251


# ---------------------------------------------------------------- registration


def test_registration_happens_when_espnet_spk_task_is_imported():
    done = run_python(
        [
            "-c",
            "import espnet2.tasks.spk as t; "
            "from espnet_imlspike.spk_encoder import IMLSpikeformerSpeakerEncoder as I, "
            "SpikeDrivenTransformerSpeakerEncoder as S, TransformerSpeakerEncoder as T; "
            "c = t.encoder_choices; "
            "assert c.get_class('iml_spikeformer') is I, c.choices(); "
            "assert c.get_class('spike_driven_transformer') is S; "
            "assert c.get_class('transformer') is T; "
            "assert c.get_class('mfaconformer').__name__ == 'MfaConformerEncoder'; "
            "print('ok')",
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_spk_registration_catches_up_when_espnet_was_imported_first():
    # -S: no .pth hook at start-up; ESPnet's SPK task is imported first, the hook later.
    done = run_python(
        [
            "-S",
            "-c",
            f"import sys, site; sys.path.append({PURELIB!r}); "
            "import espnet2.tasks.spk as t; "
            "before = 'iml_spikeformer' in t.encoder_choices.classes; "
            "site.main(); "
            "print(before, 'iml_spikeformer' in t.encoder_choices.classes)",
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("False True")


def test_registration_keeps_a_name_espnet_already_has():
    import espnet2.tasks.spk as spk_task

    from espnet_imlspike.registration import register_spk

    register_spk(spk_task)
    sentinel = type("Sentinel", (), {})
    saved = spk_task.encoder_choices.classes["transformer"]
    spk_task.encoder_choices.classes["transformer"] = sentinel
    try:
        register_spk(spk_task)
        assert spk_task.encoder_choices.classes["transformer"] is sentinel
    finally:
        spk_task.encoder_choices.classes["transformer"] = saved


def test_stock_spk_train_print_config_shows_the_encoder_options():
    done = run_python(
        ["-m", "espnet2.bin.spk_train", "--config", str(VOX / TABLE_IV[0]), "--print_config"]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = yaml.safe_load(done.stdout)
    assert shown["encoder"] == "iml_spikeformer"
    for option in ("mfa", "timesteps", "firing", "attention", "momentum", "input_layer"):
        assert option in shown["encoder_conf"]


# ---------------------------------------------------------------- sizes


def build_spk_model(config, spk_num):
    from espnet2.tasks.spk import SpeakerTask

    from espnet_imlspike.registration import register_spk

    register_spk()
    args = SpeakerTask.get_parser().parse_args(
        ["--config", str(config), "--spk_num", str(spk_num)]
    )
    return SpeakerTask.build_model(args)


def count(module):
    return sum(p.numel() for p in module.parameters())


def extractor_params_by_hand(conf):
    """Encoder + MFA LayerNorm + chn_attn_stat + rawnet3, from the config's numbers."""
    enc = conf["encoder_conf"]
    d, f, n = enc["output_size"], enc["linear_units"], enc["num_blocks"]
    mels = conf["frontend_conf"]["n_mels"]
    emb = conf["projector_conf"]["output_size"]
    assert enc["input_layer"] == "conv2d2" and enc["mfa"]
    freq = (mels - 1) // 2 - 2  # frequency bins after conv(3, stride 2), conv(3, 1)
    subsampling = (9 * d + d) + (9 * d * d + d) + (freq * d * d + d)
    block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    channels = n * d
    mfa_norm = 2 * channels
    pooling = (3 * channels * 128 + 128) + 2 * 128 + (128 * channels + channels)
    projector = 2 * 2 * channels + (2 * channels * emb + emb)
    return subsampling + n * block + mfa_norm + pooling + projector


def extractor_params_from_espnet_modules(conf):
    """The same count from ESPnet's own modules (its Transformer encoder, pooling, projector)."""
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
    from espnet2.spk.pooling.chn_attn_stat_pooling import ChnAttnStatPooling
    from espnet2.spk.projector.rawnet3_projector import RawNet3Projector

    enc = conf["encoder_conf"]
    d, n = enc["output_size"], enc["num_blocks"]
    transformer = TransformerEncoder(
        conf["frontend_conf"]["n_mels"], output_size=d,
        attention_heads=enc["attention_heads"], linear_units=enc["linear_units"],
        num_blocks=n, input_layer="conv2d2",
    )
    # ESPnet's encoder ends in after_norm(d); MFA ends in one LayerNorm(n * d)
    encoder = count(transformer) - count(transformer.after_norm) + 2 * n * d
    pooling = ChnAttnStatPooling(input_size=n * d)
    projector = RawNet3Projector(pooling.output_size(), conf["projector_conf"]["output_size"])
    return encoder + count(pooling) + count(projector)


@pytest.mark.parametrize("name", sorted(TABLE_III))
def test_table_iii_configs_build_the_papers_sizes(name):
    config = VOX / name
    conf = yaml.safe_load(config.read_text())
    model = build_spk_model(config, VOXCELEB1_SPEAKERS)
    extractor = count(model) - count(model.loss)
    assert extractor == extractor_params_by_hand(conf)
    assert extractor == extractor_params_from_espnet_modules(conf)
    assert round(extractor / 1e6, 2) == TABLE_III[name]
    # the AAM-softmax class matrix on top: 1251 speakers x embedding size
    assert count(model.loss) == VOXCELEB1_SPEAKERS * conf["projector_conf"]["output_size"]
    assert model.encoder.output_size() == 6 * conf["encoder_conf"]["output_size"]


def test_table_iii_sizes_differ_only_in_the_feed_forward_width():
    confs = {name: yaml.safe_load((VOX / name).read_text()) for name in TABLE_III}
    reference = confs["train_sid_transformer_0.60m.yaml"]
    spiking_only = ("timesteps", "firing", "attention", "momentum", "decay_layer_start")
    units = {}
    for name, conf in confs.items():
        for key in set(reference) | set(conf):
            if key not in ("encoder", "encoder_conf"):
                assert conf.get(key) == reference.get(key), (name, key)
        enc = {k: v for k, v in conf["encoder_conf"].items() if k not in spiking_only}
        units[name] = enc.pop("linear_units")
        assert enc == {k: v for k, v in reference["encoder_conf"].items()
                       if k != "linear_units"}, name
    for model in ("iml_spikeformer", "transformer"):
        assert [units[f"train_sid_{model}_{size}m.yaml"] for size in ("0.60", "1.18", "1.76")
                ] == [300, 1300, 2300]


def test_table_iii_pairs_and_table_iv_configs_have_equal_counts():
    sid = {name: count(build_spk_model(VOX / name, VOXCELEB1_SPEAKERS)) for name in TABLE_III}
    for size in ("0.60", "1.18", "1.76"):
        assert sid[f"train_sid_iml_spikeformer_{size}m.yaml"] == sid[
            f"train_sid_transformer_{size}m.yaml"]
    models = {name: build_spk_model(VOX / name, 1211) for name in TABLE_IV}
    counts = {name: count(m) for name, m in models.items()}
    assert len(set(counts.values())) == 1, counts
    names = {name: type(m.encoder).__name__ for name, m in models.items()}
    assert names == {
        "train_mfa_iml_spikeformer_t6.yaml": "IMLSpikeformerSpeakerEncoder",
        "train_mfa_iml_spikeformer_t8.yaml": "IMLSpikeformerSpeakerEncoder",
        "train_mfa_transformer.yaml": "TransformerSpeakerEncoder",
        "train_mfa_spike_driven_transformer_t8.yaml": "SpikeDrivenTransformerSpeakerEncoder",
    }
    assert [models[n].encoder.timesteps for n in TABLE_IV if "transformer.yaml" not in n] == [
        6, 8, 8]
    conf = yaml.safe_load((VOX / TABLE_IV[2]).read_text())
    assert counts[TABLE_IV[2]] - count(models[TABLE_IV[2]].loss) == (
        extractor_params_by_hand(conf))


def test_table_iv_configs_keep_espnets_mfa_conformer_recipe_settings():
    # ESPnet's egs2/voxceleb/spk1/conf/tuning/train_mfa_conformer.yaml, read by hand;
    # the encoder (name and its own options) and the embedding size are what we change.
    espnet_recipe = {
        "frontend": "default", "normalize": "utterance_mvn", "pooling": "chn_attn_stat",
        "projector": "rawnet3", "preprocessor": "spk", "loss": "aamsoftmax",
        "loss_conf": {"margin": 0.3, "scale": 30}, "optim": "adam",
        "scheduler": "CosineAnnealingWarmupRestarts", "max_epoch": 160,
        "batch_size": 128, "accum_grad": 4, "iterator_type": "category",
    }
    for name in TABLE_IV:
        conf = yaml.safe_load((VOX / name).read_text())
        for key, value in espnet_recipe.items():
            assert conf[key] == value, (name, key)
        enc = conf["encoder_conf"]
        assert (enc["output_size"], enc["attention_heads"], enc["linear_units"],
                enc["num_blocks"], enc["input_layer"], enc["mfa"]) == (
            512, 8, 2048, 6, "conv2d2", True)


SPK_DRY_RUN_SCRIPT = """
import sys, traceback
from espnet2.bin.spk_train import main
for line in sys.stdin:
    config, spk_num, out = line.split()
    print("@@@ begin " + config, file=sys.stderr, flush=True)
    try:
        main(cmd=["--dry_run", "true", "--config", config, "--spk_num", spk_num,
                  "--ngpu", "0", "--output_dir", out])
        print("@@@ ok", file=sys.stderr, flush=True)
    except BaseException:
        traceback.print_exc()
        print("@@@ failed", file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="module")
def spk_dry_runs(tmp_path_factory):
    """Stock ``espnet2.bin.spk_train --dry_run`` of every shipped SPK config, one process."""
    tmp_path = tmp_path_factory.mktemp("spk_dry_runs")
    configs = shipped_training_configs("spk")
    jobs = [f"{c} {VOXCELEB1_SPEAKERS if 'voxceleb' in str(c) else 4} {tmp_path / str(i)}"
            for i, c in enumerate(configs)]
    done = subprocess.run([sys.executable, "-c", SPK_DRY_RUN_SCRIPT], input="\n".join(jobs),
                          capture_output=True, text=True, timeout=1800)
    logs = {}
    for chunk in done.stderr.split("@@@ begin ")[1:]:
        path, _, text = chunk.partition("\n")
        logs[path] = text
    return {c: (logs.get(str(c), "never ran\n" + done.stderr[-2000:]), tmp_path / str(i))
            for i, c in enumerate(configs)}


@pytest.mark.parametrize("config", shipped_training_configs("spk"), ids=lambda p: p.name)
def test_every_shipped_spk_config_passes_stock_dry_run(config, spk_dry_runs):
    log, out = spk_dry_runs[config]
    assert "@@@ ok" in log, log[-3000:]
    dumped = yaml.safe_load((out / "config.yaml").read_text())
    assert dumped["encoder"] == yaml.safe_load(config.read_text())["encoder"]
    if config.name in TABLE_III:  # the whole model: extractor + 1251 x 192 class matrix
        conf = yaml.safe_load(config.read_text())
        total = extractor_params_by_hand(conf) + VOXCELEB1_SPEAKERS * 192
        shown = f"{total / 1e3:.2f} K" if total < 1e6 else f"{total / 1e6:.2f} M"
        assert f"Total Number of model parameters: {shown}" in log


def test_shipped_spk_configs_are_the_expected_ones():
    names = {c.name for c in shipped_training_configs("spk")}
    assert set(TABLE_III) | set(TABLE_IV) <= names
    for model in ("iml_spikeformer", "transformer", "spike_driven_transformer"):
        assert f"train_spk_{model}_tiny.yaml" in names


# ---------------------------------------------------------------- encoder contract


def make_encoder(kind, **overrides):
    from espnet_imlspike import spk_encoder

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
    from espnet_imlspike.encoder import IMLSpikeformerEncoder, SpikeDrivenTransformerEncoder

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
    with pytest.raises(TooShortUttError, match=f"at least {minimum} frames"):
        encoder(torch.randn(2, minimum + 10, 20), torch.tensor([minimum + 10, minimum - 1]))
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
    encoder = make_encoder("iml")
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


# ---------------------------------------------------------------- scoring and EER


def test_equal_error_rate_on_hand_worked_examples():
    from espnet_imlspike.demo.spk_pipeline import equal_error_rate

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

    from espnet_imlspike.demo.spk_pipeline import equal_error_rate

    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(1.0, 1.0, 400), rng.normal(-0.5, 1.0, 1600)])
    labels = np.concatenate([np.ones(400, int), np.zeros(1600, int)])
    ours = equal_error_rate(scores, labels)
    espnet = tuneThresholdfromScore(scores, labels, [1, 0.1])[1] / 100
    assert abs(ours - espnet) <= 1 / 400
    # two unit-variance Gaussians 1.5 apart: EER = Phi(-0.75) = 22.7%
    assert abs(ours - 0.5 * math.erfc(0.75 / math.sqrt(2))) < 0.03


def test_cosine_score_averages_all_segment_pairs():
    from espnet_imlspike.demo.spk_pipeline import cosine_score

    enroll = np.array([[3.0, 0.0], [0.0, 2.0]])
    test = np.array([[1.0, 1.0]])
    # cos to (1, 1): both segments 1/sqrt(2)
    assert cosine_score(enroll, test) == pytest.approx(1 / math.sqrt(2))
    assert cosine_score(np.array([1.0, 0.0]), np.array([[0.0, 5.0], [-2.0, 0.0]])) == (
        pytest.approx(-0.5))


def test_trials_cover_every_pair_with_correct_labels(tmp_path):
    from espnet_imlspike.demo.spk_pipeline import read_map, write_trials

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
    from espnet_imlspike.demo.spk_pipeline import make_speaker_corpus, read_map

    dirs = make_speaker_corpus(tmp_path, num_speakers=4, train_per_speaker=2,
                               test_per_speaker=2)
    train_spk = set(read_map(dirs["train"] / "utt2spk").values())
    test_spk = set(read_map(dirs["test"] / "utt2spk").values())
    assert train_spk == {"spk00", "spk02"} and test_spk == {"spk01", "spk03"}
    assert (dirs["train"] / "category2utt").read_text() == (
        dirs["train"] / "spk2utt").read_text()
    assert len(read_map(dirs["test"] / "trial_label")) == 6  # C(4, 2)


# ---------------------------------------------------------------- stock pipeline


@pytest.mark.slow
def test_stock_spk_train_extract_and_score_on_generated_speakers(tmp_path):
    import soundfile
    from espnet2.bin.spk_inference import Speech2Embedding
    from espnet2.train.reporter import Reporter
    from espnet2.utils.eer import tuneThresholdfromScore

    from espnet_imlspike.demo.spk_pipeline import (
        make_speaker_corpus,
        read_map,
        run_verification,
    )

    dirs = make_speaker_corpus(tmp_path, num_speakers=8, train_per_speaker=8,
                               test_per_speaker=5)
    config = TONE_SPK / "train_spk_iml_spikeformer_tiny.yaml"
    result = run_verification(tmp_path, config, TONE_SPK / "decode.yaml", dirs,
                              ["--max_epoch", "4"], tag="iml")
    exp = result["exp"]
    assert yaml.safe_load((exp / "config.yaml").read_text())["encoder"] == "iml_spikeformer"

    # every test utterance embedded, num_eval=2 segments of the 32-dim embedding
    embeddings = dict(np.load(result["embeddings"]))
    wavs = read_map(dirs["test"] / "wav.scp")
    assert set(embeddings) == set(wavs)
    assert all(v.shape == (2, 32) and np.isfinite(v).all() for v in embeddings.values())

    # ESPnet's own validation EER of the chosen checkpoint (same trials, same segments,
    # computed by its trainer) against ours from the extracted embeddings
    state = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    reporter = Reporter()
    reporter.load_state_dict(state["reporter"])
    best = reporter.get_best_epoch("valid", "eer", "min")
    assert (exp / "valid.eer.best.pth").resolve().name == f"{best}epoch.pth"
    trainer_eer = reporter.get_value("valid", "eer", best)
    labels = result["labels"]
    one_trial = 100 / min(labels.sum(), (1 - labels).sum())
    ours = 100 * result["eer"]
    assert abs(ours - trainer_eer) <= one_trial + 1e-6, (ours, trainer_eer)
    distance_scores = []  # ESPnet's scoring: minus the mean distance of unit embeddings
    for key in read_map(dirs["test"] / "trial_label"):
        a, b = (torch.nn.functional.normalize(torch.from_numpy(embeddings[u]), dim=1)
                for u in key.split("*"))
        distance_scores.append(-torch.cdist(a, b).mean().item())
    espnet_eer = tuneThresholdfromScore(np.array(distance_scores), labels, [1, 0.1])[1]
    assert abs(espnet_eer - trainer_eer) <= one_trial + 1e-6
    assert ours < 45.0, ours  # unseen speakers told apart better than chance (50%)

    # the stock Speech2Embedding (spk_inference) on the same crops gives the same vectors
    speech2embedding = Speech2Embedding(exp / "config.yaml", exp / "valid.eer.best.pth")
    utt = sorted(wavs)[0]
    audio, _ = soundfile.read(wavs[utt])
    target = 8000  # 0.5 s, decode.yaml's target_duration
    if len(audio) < target:
        audio = np.pad(audio, (0, target - len(audio) + 1), "wrap")
    for index, start in enumerate(np.linspace(0, len(audio) - target, num=2)):
        crop = audio[int(start): int(start) + target]
        vector = speech2embedding(crop)[0].numpy()
        stored = embeddings[utt][index]
        cosine = vector @ stored / np.linalg.norm(vector) / np.linalg.norm(stored)
        assert cosine > 0.9999, cosine

    # the IMLS running thresholds were trained and saved
    weights = torch.load(exp / "valid.eer.best.pth", map_location="cpu")
    key = "encoder.encoders.0.attn_input_neuron.running_max"
    assert not torch.equal(weights[key], torch.ones_like(weights[key]))

    # the energy-report stage works on the speaker model too (stock SpeakerTask loading)
    import json as _json

    from conftest import run_python

    done = run_python(
        ["-m", "espnet_imlspike.bin.energy_report",
         "--spk_train_config", str(exp / "config.yaml"),
         "--spk_model_file", str(exp / "valid.eer.best.pth"),
         "--data_dir", str(dirs["test"]), "--max_utterances", "3",
         "--output_dir", str(exp / "energy")]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = _json.loads((exp / "energy" / "energy.json").read_text())
    ann, snn = report["models"]
    assert report["utterances"] == 3 and snn["timesteps"] == weights_timesteps(exp)
    assert 0 < snn["energy_mj"] < ann["energy_mj"]
    assert all(0 <= f["rate"] <= 1 for f in report["firing"].values())


def weights_timesteps(exp):
    """T of the trained speaker model, from its config."""
    return yaml.safe_load((exp / "config.yaml").read_text())["encoder_conf"]["timesteps"]
