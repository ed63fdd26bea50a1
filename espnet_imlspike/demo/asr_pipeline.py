"""Tiny end-to-end ASR run through ESPnet's stock entry points, offline.

Stages (each a subprocess of the unmodified ``python -m espnet2.bin.*`` programs,
exactly as ``asr.sh`` would call them): generate the tone corpus, write the char token
list and shape files, collect feature statistics (``asr_train --collect_stats true``),
train (``asr_train``), decode (``asr_inference``), and score the character error rate.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import soundfile

from espnet_imlspike.demo.tone_corpus import LETTERS, make_corpus

TOKENS = ["<blank>", "<unk>", *LETTERS, "<sos/eos>"]


def read_kaldi_map(path: Path) -> Dict[str, str]:
    """Read a Kaldi-style 'key value...' file into a dict."""
    entries = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(" ")
            if key:
                entries[key] = value
    return entries


def write_shape_files(data_dir: Path, shape_dir: Path) -> None:
    """speech_shape (samples) and text_shape.char (characters) for one data dir."""
    shape_dir.mkdir(parents=True, exist_ok=True)
    with open(shape_dir / "speech_shape", "w") as f:
        for key, path in read_kaldi_map(data_dir / "wav.scp").items():
            f.write(f"{key} {soundfile.info(path).frames}\n")
    with open(shape_dir / "text_shape.char", "w") as f:
        for key, text in read_kaldi_map(data_dir / "text").items():
            f.write(f"{key} {len(text)}\n")


def character_error_rate(ref: Dict[str, str], hyp: Dict[str, str]) -> float:
    """CER in percent over the keys of ``ref`` (a missing hypothesis counts as empty)."""
    import editdistance

    errors = sum(editdistance.eval(ref[k], hyp.get(k, "").replace(" ", "")) for k in ref)
    return 100.0 * errors / max(1, sum(len(v) for v in ref.values()))


def run(command: List[str], log: Path) -> None:
    """Run one stage, logging to a file; fail with the log tail on error."""
    print("+", " ".join(command), f"> {log}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "".join(open(log).readlines()[-30:])
        raise RuntimeError(f"stage failed ({done.returncode}): see {log}\n{tail}")


def data_args(prefix: str, data_dir: Path, shape_dir: Optional[Path]) -> List[str]:
    args = [
        f"--{prefix}_data_path_and_name_and_type",
        f"{data_dir}/wav.scp,speech,sound",
        f"--{prefix}_data_path_and_name_and_type",
        f"{data_dir}/text,text,text",
    ]
    if shape_dir is not None:
        args += [
            f"--{prefix}_shape_file",
            f"{shape_dir}/speech_shape",
            f"--{prefix}_shape_file",
            f"{shape_dir}/text_shape.char",
        ]
    return args


def train_and_decode(
    out_dir: Path,
    config: Path,
    dirs: Dict[str, Path],
    extra_train_args: List[str] = (),
    tag: str = "asr",
) -> float:
    """Collect stats, train, decode the test split; return the test CER (%)."""
    python = sys.executable
    token_list = out_dir / "tokens.txt"
    token_list.write_text("\n".join(TOKENS) + "\n")
    common = [
        "--use_preprocessor", "true",
        "--token_type", "char",
        "--token_list", str(token_list),
        "--ngpu", "0",
        "--num_workers", "0",
        "--seed", "0",
        # folded batches need one fold length per shape file (speech, text)
        "--fold_length", "80000",
        "--fold_length", "150",
    ]
    stats_dir = out_dir / "stats"
    if not (stats_dir / "train" / "feats_stats.npz").exists():
        for split in ("train", "valid"):
            write_shape_files(dirs[split], out_dir / "shapes" / split)
        run(
            [python, "-m", "espnet2.bin.asr_train", "--collect_stats", "true",
             "--config", str(config), *common,
             *data_args("train", dirs["train"], out_dir / "shapes" / "train"),
             *data_args("valid", dirs["valid"], out_dir / "shapes" / "valid"),
             "--output_dir", str(stats_dir)],
            out_dir / "logs" / "collect_stats.log",
        )
        for split in ("train", "valid"):
            # as asr.sh does: the token shape is "<length>,<vocabulary size>"
            shapes = read_kaldi_map(stats_dir / split / "text_shape")
            with open(stats_dir / split / "text_shape.char", "w") as f:
                for key, shape in shapes.items():
                    f.write(f"{key} {shape},{len(TOKENS)}\n")
    exp_dir = out_dir / "exp" / tag
    run(
        [python, "-m", "espnet2.bin.asr_train", "--config", str(config), *common,
         "--normalize", "global_mvn",
         "--normalize_conf", f"stats_file={stats_dir}/train/feats_stats.npz",
         *data_args("train", dirs["train"], stats_dir / "train"),
         *data_args("valid", dirs["valid"], stats_dir / "valid"),
         "--use_tensorboard", "false",
         "--output_dir", str(exp_dir), *extra_train_args],
        out_dir / "logs" / f"train_{tag}.log",
    )
    decode_dir = out_dir / "decode" / tag
    run(
        [python, "-m", "espnet2.bin.asr_inference", "--ngpu", "0",
         "--asr_train_config", str(exp_dir / "config.yaml"),
         "--asr_model_file", str(exp_dir / "valid.acc.best.pth"),
         "--data_path_and_name_and_type", f"{dirs['test']}/wav.scp,speech,sound",
         "--key_file", str(dirs["test"] / "wav.scp"),
         "--beam_size", "4", "--ctc_weight", "0.3", "--batch_size", "1",
         "--output_dir", str(decode_dir)],
        out_dir / "logs" / f"decode_{tag}.log",
    )
    hyp = read_kaldi_map(decode_dir / "1best_recog" / "text")
    return character_error_rate(read_kaldi_map(dirs["test"] / "text"), hyp)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", type=Path, default=Path("demo_out"))
    parser.add_argument(
        "--config", type=Path, nargs="+", required=True,
        help="one or more asr_train configs; each is trained and decoded",
    )
    parser.add_argument("--num_train", type=int, default=300)
    parser.add_argument("--num_valid", type=int, default=30)
    parser.add_argument("--num_test", type=int, default=30)
    parser.add_argument("--max_epoch", type=int, default=None)
    args = parser.parse_args(argv)
    for config in args.config:
        if not config.is_file():
            parser.error(f"--config {config}: no such file")
    start = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.num_train, "valid": args.num_valid, "test": args.num_test}
    dirs = make_corpus(args.out_dir, sizes)
    extra = [] if args.max_epoch is None else ["--max_epoch", str(args.max_epoch)]
    results = []
    for config in args.config:
        tag = config.stem.replace("train_asr_", "")
        results.append((tag, train_and_decode(args.out_dir, config, dirs, extra, tag)))
    print(f"\n| model | test CER (%) |\n|---|---|")
    for tag, cer in results:
        print(f"| {tag} | {cer:.1f} |")
    print(f"\n{len(LETTERS)} letters, {args.num_test} test words; a model that always "
          f"outputs nothing scores 100%. {time.time() - start:.0f} s in all; decoded "
          f"text in {args.out_dir}/decode/<model>/1best_recog/text")


if __name__ == "__main__":
    main()
