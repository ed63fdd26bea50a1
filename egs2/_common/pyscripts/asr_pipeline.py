"""End-to-end ASR comparison through ESPnet's stock entry points, offline.

Stages (each a subprocess of the unmodified ``python -m espnet2.bin.*`` programs, called
as ``asr.sh`` calls them): generate a corpus (synthetic speech from espeak-ng, or the
tone language), train the token model (sentencepiece, then ``espnet2.bin.tokenize_text``
for the token list) or write the char list, collect feature statistics
(``asr_train --collect_stats true``), train (``asr_train``), decode (``asr_inference``),
score CER/WER, run the energy report (``espnet_imlspike.bin.energy_report``) on spiking
models, and print one comparison table.
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import soundfile

from espnet2.fileio.read_text import read_2columns_text
from stages import run_stage
from tone_corpus import LETTERS

@dataclass
class TokenSetup:
    """Token type, token list and (for bpe) the sentencepiece model."""

    token_type: str
    token_list: Path
    bpemodel: Optional[Path] = None

    def args(self) -> List[str]:
        args = ["--token_type", self.token_type, "--token_list", str(self.token_list)]
        if self.bpemodel is not None:
            args += ["--bpemodel", str(self.bpemodel)]
        return args

    def size(self) -> int:
        return len(self.token_list.read_text().split())


def char_tokens(out_dir: Path, letters: str = LETTERS) -> TokenSetup:
    """A char token list: <blank>, <unk>, the letters, <sos/eos>."""
    path = out_dir / "tokens.txt"
    path.write_text("\n".join(["<blank>", "<unk>", *letters, "<sos/eos>"]) + "\n")
    return TokenSetup("char", path)


def bpe_tokens(out_dir: Path, train_dir: Path, vocab_size: int) -> TokenSetup:
    """Train a sentencepiece unigram model on the training text, as asr.sh stage 5 does,
    then write the token list with ESPnet's stock ``tokenize_text``."""
    import sentencepiece

    token_dir = out_dir / "token_list" / f"bpe_unigram{vocab_size}"
    token_dir.mkdir(parents=True, exist_ok=True)
    texts = [v for v in read_2columns_text(train_dir / "text").values()]
    (token_dir / "train.txt").write_text("\n".join(texts) + "\n")
    sentencepiece.SentencePieceTrainer.train(
        input=str(token_dir / "train.txt"), vocab_size=vocab_size, model_type="unigram",
        model_prefix=str(token_dir / "bpe"), character_coverage=1.0,
        input_sentence_size=100000000, minloglevel=2,
    )
    run_stage(
        [sys.executable, "-m", "espnet2.bin.tokenize_text", "--token_type", "bpe",
         "--bpemodel", str(token_dir / "bpe.model"), "--input", str(train_dir / "text"),
         "--output", str(token_dir / "tokens.txt"), "--field", "2-",
         "--write_vocabulary", "true", "--add_symbol", "<blank>:0",
         "--add_symbol", "<unk>:1", "--add_symbol", "<sos/eos>:-1"],
        out_dir / "logs" / "tokenize_text.log",
    )
    return TokenSetup("bpe", token_dir / "tokens.txt", token_dir / "bpe.model")


def write_shape_files(data_dir: Path, shape_dir: Path, token_type: str) -> None:
    """speech_shape (samples) and a rough text shape (characters), for collect_stats."""
    shape_dir.mkdir(parents=True, exist_ok=True)
    with open(shape_dir / "speech_shape", "w") as f:
        for key, path in read_2columns_text(data_dir / "wav.scp").items():
            f.write(f"{key} {soundfile.info(path).frames}\n")
    with open(shape_dir / f"text_shape.{token_type}", "w") as f:
        for key, text in read_2columns_text(data_dir / "text").items():
            f.write(f"{key} {len(text)}\n")


def error_rates(ref: Dict[str, str], hyp: Dict[str, str]) -> Dict[str, float]:
    """CER (characters, spaces removed) and WER (words) in percent over ``ref``'s keys;
    a missing hypothesis counts as empty."""
    import editdistance

    char_errors = sum(
        editdistance.eval(ref[k].replace(" ", ""), hyp.get(k, "").replace(" ", ""))
        for k in ref
    )
    chars = sum(len(v.replace(" ", "")) for v in ref.values())
    word_errors = sum(editdistance.eval(ref[k].split(), hyp.get(k, "").split()) for k in ref)
    words = sum(len(v.split()) for v in ref.values())
    return {"cer": 100.0 * char_errors / max(1, chars),
            "wer": 100.0 * word_errors / max(1, words)}


def data_args(
    prefix: str, data_dir: Path, shape_dir: Optional[Path], token_type: str
) -> List[str]:
    args = [
        f"--{prefix}_data_path_and_name_and_type", f"{data_dir}/wav.scp,speech,sound",
        f"--{prefix}_data_path_and_name_and_type", f"{data_dir}/text,text,text",
    ]
    if shape_dir is not None:
        args += [
            f"--{prefix}_shape_file", f"{shape_dir}/speech_shape",
            f"--{prefix}_shape_file", f"{shape_dir}/text_shape.{token_type}",
        ]
    return args


def collect_stats(out_dir: Path, config: Path, dirs: Dict[str, Path], tokens: TokenSetup,
                  common: List[str]) -> Path:
    """``asr_train --collect_stats true`` once per corpus; returns the stats dir."""
    stats_dir = out_dir / "stats"
    if (stats_dir / "train" / "feats_stats.npz").exists():
        return stats_dir
    kind = tokens.token_type
    for split in ("train", "valid"):
        write_shape_files(dirs[split], out_dir / "shapes" / split, kind)
    run_stage(
        [sys.executable, "-m", "espnet2.bin.asr_train", "--collect_stats", "true",
         "--config", str(config), *common,
         *data_args("train", dirs["train"], out_dir / "shapes" / "train", kind),
         *data_args("valid", dirs["valid"], out_dir / "shapes" / "valid", kind),
         "--output_dir", str(stats_dir)],
        out_dir / "logs" / "collect_stats.log",
    )
    for split in ("train", "valid"):
        # as asr.sh does: the token shape is "<length>,<vocabulary size>"
        shapes = read_2columns_text(stats_dir / split / "text_shape")
        with open(stats_dir / split / f"text_shape.{kind}", "w") as f:
            for key, shape in shapes.items():
                f.write(f"{key} {shape},{tokens.size()}\n")
    return stats_dir


def train_and_decode(
    out_dir: Path,
    config: Path,
    dirs: Dict[str, Path],
    extra_train_args: Sequence[str] = (),
    tag: str = "asr",
    tokens: Optional[TokenSetup] = None,
    ngpu: int = 0,
) -> Dict:
    """Collect stats (once), train, decode the test split and score it.

    Args:
        out_dir: Working directory (stats/, exp/<tag>, decode/<tag>, logs/).
        config: asr_train config.
        dirs: Data dirs with "train", "valid" and "test".
        extra_train_args: Appended to the asr_train command line.
        tag: Name of this model's exp and decode dirs.
        tokens: Token setup; a char list of the tone letters if None.
        ngpu: GPUs for training and decoding.

    Returns:
        {"cer", "wer", "exp_dir", "decode_dir"}
    """
    python = sys.executable
    tokens = tokens or char_tokens(out_dir)
    common = [
        "--use_preprocessor", "true", *tokens.args(),
        "--ngpu", str(ngpu), "--num_workers", "0", "--seed", "0",
        # folded batches need one fold length per shape file (speech, text)
        "--fold_length", "80000", "--fold_length", "150",
    ]
    stats_dir = collect_stats(out_dir, config, dirs, tokens, common)
    exp_dir = out_dir / "exp" / tag
    kind = tokens.token_type
    run_stage(
        [python, "-m", "espnet2.bin.asr_train", "--config", str(config), *common,
         "--normalize", "global_mvn",
         "--normalize_conf", f"stats_file={stats_dir}/train/feats_stats.npz",
         *data_args("train", dirs["train"], stats_dir / "train", kind),
         *data_args("valid", dirs["valid"], stats_dir / "valid", kind),
         "--use_tensorboard", "false",
         "--output_dir", str(exp_dir), *extra_train_args],
        out_dir / "logs" / f"train_{tag}.log",
    )
    decode_dir = out_dir / "decode" / tag
    run_stage(
        [python, "-m", "espnet2.bin.asr_inference", "--ngpu", str(ngpu),
         "--asr_train_config", str(exp_dir / "config.yaml"),
         "--asr_model_file", str(exp_dir / "valid.acc.best.pth"),
         "--data_path_and_name_and_type", f"{dirs['test']}/wav.scp,speech,sound",
         "--key_file", str(dirs["test"] / "wav.scp"),
         "--beam_size", "4", "--ctc_weight", "0.3", "--batch_size", "1",
         "--output_dir", str(decode_dir)],
        out_dir / "logs" / f"decode_{tag}.log",
    )
    hyp = read_2columns_text(decode_dir / "1best_recog" / "text")
    scores = error_rates(read_2columns_text(dirs["test"] / "text"), hyp)
    return {**scores, "exp_dir": exp_dir, "decode_dir": decode_dir}


def energy_report(out_dir: Path, exp_dir: Path, test_dir: Path, tag: str) -> Dict:
    """Run the energy-report stage on a trained spiking model; return its JSON."""
    report_dir = out_dir / "energy" / tag
    run_stage(
        [sys.executable, "-m", "espnet_imlspike.bin.energy_report",
         "--asr_train_config", str(exp_dir / "config.yaml"),
         "--asr_model_file", str(exp_dir / "valid.acc.best.pth"),
         "--data_dir", str(test_dir), "--output_dir", str(report_dir)],
        out_dir / "logs" / f"energy_{tag}.log",
    )
    return json.loads((report_dir / "energy.json").read_text())


def comparison_table(rows: List[Dict]) -> str:
    """One Markdown table: error rates, parameters and encoder energy per model, the energy
    both without the convolutional front (encoder blocks only, the paper's apparent
    convention) and with it, each with its saving against the ANN of the same size."""
    lines = [
        "| model | parameters | test CER (%) | test WER (%) | T | energy, blocks only "
        "(mJ/utt) | saving, blocks only | energy, with conv front (mJ/utt) | saving, with "
        "conv front |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row, key, fmt):
        return "" if row.get(key) is None else fmt.format(row[key])

    for row in rows:
        lines.append(
            f"| {row['tag']} | {row['parameters'] / 1e6:.2f}M | {row['cer']:.1f} | "
            f"{row['wer']:.1f} | {row.get('timesteps', 1)} | "
            f"{cell(row, 'energy_mj', '{:.4g}')} | {cell(row, 'saving', 'x{:.2f}')} | "
            f"{cell(row, 'energy_front_mj', '{:.4g}')} | "
            f"{cell(row, 'saving_front', 'x{:.2f}')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", type=Path, default=Path("demo_out"))
    parser.add_argument(
        "--config", type=Path, nargs="+", required=True,
        help="asr_train configs; each is trained, decoded and (if spiking) energy-reported",
    )
    parser.add_argument("--corpus", choices=("speech", "tone"), default="speech",
                        help="speech: espeak-ng spoken digits (BPE tokens); tone: tones (chars)")
    parser.add_argument("--num_train", type=int, default=300)
    parser.add_argument("--num_valid", type=int, default=30)
    parser.add_argument("--num_test", type=int, default=30)
    parser.add_argument("--bpe_vocab_size", type=int, default=20)
    parser.add_argument("--max_epoch", type=int, default=None,
                        help="override the configs' max_epoch")
    parser.add_argument("--ngpu", type=int, default=0)
    args = parser.parse_args(argv)
    for config in args.config:
        if not config.is_file():
            parser.error(f"--config {config}: no such file")
    start = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.num_train, "valid": args.num_valid, "test": args.num_test}
    print(f"[1/4] generating the {args.corpus} corpus {sizes}", flush=True)
    if args.corpus == "speech":
        from speech_corpus import make_corpus

        dirs = make_corpus(args.out_dir, sizes)
        print("[2/4] training the sentencepiece token model", flush=True)
        tokens = bpe_tokens(args.out_dir, dirs["train"], args.bpe_vocab_size)
    else:
        from tone_corpus import make_corpus

        dirs = make_corpus(args.out_dir, sizes)
        tokens = char_tokens(args.out_dir)
    extra = [] if args.max_epoch is None else ["--max_epoch", str(args.max_epoch)]
    rows = []
    for index, config in enumerate(args.config, 1):
        tag = config.stem.replace("train_asr_", "")
        print(f"[3/4] model {index}/{len(args.config)}: {tag}: train, decode, score",
              flush=True)
        result = train_and_decode(args.out_dir, config, dirs, extra, tag, tokens, args.ngpu)
        row = {"tag": tag, "cer": result["cer"], "wer": result["wer"]}
        import yaml

        encoder = yaml.safe_load((result["exp_dir"] / "config.yaml").read_text())["encoder"]
        if encoder in ("iml_spikeformer", "spike_driven_transformer"):
            print(f"[4/4] energy report: {tag}", flush=True)
            report = energy_report(args.out_dir, result["exp_dir"], dirs["test"], tag)
            ann, snn = report["models"]
            row.update(parameters=snn["parameters"], timesteps=snn["timesteps"],
                       energy_mj=snn["energy_blocks_mj"],
                       saving=ann["energy_blocks_mj"] / snn["energy_blocks_mj"],
                       energy_front_mj=snn["energy_with_front_mj"],
                       saving_front=ann["energy_with_front_mj"] / snn["energy_with_front_mj"],
                       ann_energy_mj=ann["energy_blocks_mj"],
                       ann_energy_front_mj=ann["energy_with_front_mj"])
        else:
            row["parameters"] = _count_parameters(result["exp_dir"])
        rows.append(row)
        print(f"      {tag}: CER {row['cer']:.1f}%, WER {row['wer']:.1f}% "
              f"({time.time() - start:.0f} s so far)", flush=True)
    for row in rows:  # the ANN rows get the ANN energy of the same size, from a report
        if "energy_mj" not in row:
            same = [r for r in rows if r.get("ann_energy_mj") and r["parameters"] == row["parameters"]]
            if same:
                row.update(energy_mj=same[0]["ann_energy_mj"], saving=1.0,
                           energy_front_mj=same[0]["ann_energy_front_mj"], saving_front=1.0)
    table = comparison_table(rows)
    (args.out_dir / "results.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nA model that outputs nothing scores 100%. Encoder energy per utterance (Eq. "
          f"16-17), with the convolutional front excluded (blocks only) and included (see "
          f"docs/energy.md); the Transformer row is the ANN of the same size. "
          f"{time.time() - start:.0f} s in all; outputs in {args.out_dir}/ (decode/, energy/, "
          f"results.md)")


def _count_parameters(exp_dir: Path) -> int:
    """Parameters of the trained model, built from its config by ESPnet."""
    from espnet2.tasks.asr import ASRTask

    model, _ = ASRTask.build_model_from_file(exp_dir / "config.yaml", None, "cpu")
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
