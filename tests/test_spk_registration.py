"""Speaker encoders are registered in ESPnet's SPK task without an import."""

import sysconfig

import yaml

from helpers import REPO, run_python

VOX = REPO / "conf/spk/voxceleb"
PURELIB = sysconfig.get_paths()["purelib"]

# Table IV (speaker verification): IML T=6/T=8 and both baselines at one size
TABLE_IV = [
    "train_mfa_iml_spikeformer_t6.yaml",
    "train_mfa_iml_spikeformer_t8.yaml",
    "train_mfa_transformer.yaml",
    "train_mfa_spike_driven_transformer_t8.yaml",
]


def test_registration_happens_when_espnet_spk_task_is_imported():
    done = run_python(
        [
            "-c",
            "import espnet2.tasks.spk as t; "
            "from espnet_imlspike.encoders.spk import IMLSpikeformerSpeakerEncoder as I, "
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
