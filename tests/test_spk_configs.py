"""Shipped speaker configs: the paper's sizes (Tables III-IV) and stock dry runs."""

import subprocess
import sys

import pytest
import yaml

from helpers import REPO, build_spk_model, shipped_training_configs

VOX = REPO / "conf/spk/voxceleb"

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
