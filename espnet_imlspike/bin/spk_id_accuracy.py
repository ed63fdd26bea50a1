"""Speaker-identification accuracy of a trained ESPnet speaker model (closed set).

Example::

    python -m espnet_imlspike.bin.spk_id_accuracy \\
        --spk_train_config exp/spk_train/config.yaml \\
        --spk_model_file exp/spk_train/valid.eer.best.pth \\
        --data_dir data/sid_test --output_dir exp/spk_train/sid

embeds every utterance of ``<data_dir>/wav.scp`` (``num_eval`` crops of
``target_duration`` seconds, as ``spk_embed_extract`` cuts them), assigns it the training
speaker whose row of the classification head (the AAM-softmax / softmax weight matrix)
is the most cosine-similar, and compares with ``<data_dir>/utt2spk``. Writes
``spk_id_accuracy.json`` (accuracy, per-speaker accuracy, every prediction) and
``spk_id_accuracy.txt`` (one line). Class indices are mapped to speaker names from the
training spk2utt exactly as ESPnet's SPK preprocessor numbered them (see
``espnet_imlspike.scoring.identification``).
"""

import argparse
import json
from pathlib import Path
from typing import List, Optional

from espnet_imlspike.bin.cli import OutputDir, add_bool, positive_int, run
from espnet_imlspike.errors import InputError

OUTPUTS = ("spk_id_accuracy.json", "spk_id_accuracy.txt")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spk_id_accuracy", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--spk_train_config", type=Path, required=True,
                        help="config.yaml written by spk_train")
    parser.add_argument("--spk_model_file", type=Path, required=True,
                        help="trained checkpoint (*.pth) matching the config")
    parser.add_argument("--data_dir", type=Path, required=True,
                        help="Kaldi-style test dir with wav.scp and utt2spk "
                             "(utterances of training speakers)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--spk2utt", type=Path, default=None,
                        help="the training spk2utt (default: the --spk2utt stored in the "
                             "training config)")
    parser.add_argument("--target_duration", type=float, default=None,
                        help="crop length in seconds (default: the training config's "
                             "preprocessor_conf target_duration)")
    parser.add_argument("--num_eval", type=positive_int, default=None,
                        help="crops per utterance (default: the training config's "
                             "preprocessor_conf num_eval, else 10 as ESPnet)")
    parser.add_argument("--batch_size", type=positive_int, default=8,
                        help="utterances per forward pass")
    add_bool(parser, "--overwrite", False, "replace an earlier result in --output_dir")
    add_bool(parser, "--allow_uncalibrated", False,
             "score even if IMLS threshold statistics were never trained")
    return parser


def crop_settings(config: dict, target_duration: Optional[float],
                  num_eval: Optional[int]) -> tuple:
    """Crop length and count: the options, else the training config's preprocessor_conf.

    Args:
        config: The training config.yaml as a dict.
        target_duration: --target_duration (seconds) or None.
        num_eval: --num_eval or None.

    Returns:
        (target length in samples, num_eval, sample rate).
    """
    conf = config.get("preprocessor_conf") or {}
    rate = int(conf.get("sample_rate", config.get("sample_rate", 16000)))
    duration = target_duration if target_duration is not None else conf.get(
        "target_duration", config.get("target_duration", 3.0))
    segments = num_eval if num_eval is not None else conf.get("num_eval", 10)
    if duration <= 0 or segments < 1:
        raise InputError(f"need target_duration > 0 and num_eval >= 1, "
                         f"got {duration} and {segments}")
    return int(duration * rate), int(segments), rate


def run_scoring(args: argparse.Namespace, output: OutputDir) -> dict:
    """Load the model, identify, write the JSON and the summary line.

    Args:
        args: Parsed command line.

    Returns:
        The report (the JSON's content plus "summary", the one-line text).
    """
    from espnet_imlspike.model_loading import load_trained_model, read_config
    from espnet_imlspike.scoring.identification import identify, speaker_label_mapping

    config = read_config(args.spk_train_config, "--spk_train_config")
    if "spk_num" not in config and "spk2utt" not in config:
        raise InputError(
            f"{args.spk_train_config} is not a speaker model's config (spk_train writes "
            "spk2utt and spk_num; an ASR config has neither)")
    model, config = load_trained_model(
        args.spk_train_config, args.spk_model_file, encoders=None, task="spk",
        allow_uncalibrated=args.allow_uncalibrated)
    spk2utt = args.spk2utt or Path(config.get("spk2utt") or "")
    if not str(spk2utt) or str(spk2utt) == ".":
        raise InputError(
            f"{args.spk_train_config} names no spk2utt; give --spk2utt")
    if not spk2utt.is_file():
        raise InputError(
            f"training spk2utt {spk2utt}: no such file (give --spk2utt)")
    spk2label = speaker_label_mapping(spk2utt)
    if config.get("spk_num") not in (None, len(spk2label)):
        raise InputError(f"{spk2utt} lists {len(spk2label)} speakers but the model was "
                         f"trained with spk_num {config['spk_num']}")
    target, num_eval, rate = crop_settings(config, args.target_duration, args.num_eval)
    result = identify(model, spk2label, args.data_dir, target, num_eval, args.batch_size)
    report = {
        "spk_train_config": str(args.spk_train_config),
        "spk_model_file": str(args.spk_model_file),
        "data_dir": str(args.data_dir),
        "spk2utt": str(spk2utt),
        "encoder": config.get("encoder"),
        "target_duration": target / rate,
        "num_eval": num_eval,
        "chance": 100.0 / len(spk2label),
        **result,
    }
    output.prepare()
    (args.output_dir / "spk_id_accuracy.json").write_text(json.dumps(report, indent=2))
    line = (f"{args.data_dir}: speaker identification accuracy {report['accuracy']:.2f}% "
            f"({report['correct']}/{report['utterances']} utterances, "
            f"{report['speakers']} speakers, {report['classes']} classes, "
            f"chance {report['chance']:.2f}%)")
    (args.output_dir / "spk_id_accuracy.txt").write_text(line + "\n")
    report["summary"] = line
    return report


def main(cmd: Optional[List[str]] = None) -> None:
    def body(args):
        for path, flag in ((args.spk_train_config, "--spk_train_config"),
                           (args.spk_model_file, "--spk_model_file")):
            if not path.is_file():
                raise InputError(f"{flag} {path}: no such file")
        for name in ("wav.scp", "utt2spk"):
            if not (args.data_dir / name).is_file():
                raise InputError(f"--data_dir {args.data_dir}: no {name}")
        output = OutputDir(args.output_dir, OUTPUTS, args.overwrite).check()
        print(run_scoring(args, output)["summary"])

    run(get_parser(), body, cmd)


if __name__ == "__main__":
    main()
