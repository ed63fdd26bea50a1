"""energy_report's new options are checked before any model is loaded."""

import pytest

from espnet_imlspike.bin.energy_report import main


@pytest.fixture
def files(tmp_path):
    for name in ("config.yaml", "model.pth"):
        (tmp_path / name).write_text("")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/wav.scp").write_text("")
    return tmp_path


def run(files, *extra):
    return main(["--asr_train_config", str(files / "config.yaml"),
                 "--asr_model_file", str(files / "model.pth"),
                 "--data_dir", str(files / "data"), "--output_dir", str(files / "out"),
                 *extra])


@pytest.mark.parametrize("extra, message", [
    (["--compare", "a.yaml"], "pairs"),
    (["--compare", "missing.yaml", "missing.pth"], "missing.yaml: no such file"),
    (["--sram_pj_per_byte", "8192-2.5"], "--sram_pj_per_byte"),
    (["--sram_pj_per_byte", "32768:5,8192:2.5"], "SRAM sizes increasing"),
])
def test_bad_energy_options_are_refused_before_any_work(files, capsys, extra, message):
    with pytest.raises(SystemExit) as done:
        run(files, *extra)
    assert done.value.code == 2
    assert message in capsys.readouterr().err
    assert not (files / "out").exists()
