"""Tiny speaker-verification run through ESPnet's stock SPK entry points, offline.

Stages, each a subprocess of the unmodified ``python -m espnet2.bin.*`` programs with the
arguments ``egs2/TEMPLATE/spk1/spk.sh`` gives them (one job, CPU):

1. generate the tone corpus with several speakers (each speaker its own pitch) and split
   the speakers into training speakers and unseen test speakers (open-set verification);
   write the test trials (``trial.scp``, ``trial2.scp``, ``trial_label``, keys
   ``<enroll>*<test>``) and ``category2utt`` (a copy of ``spk2utt``) as spk.sh's stage 3;
2. ``spk_train --collect_stats true`` and ``aggregate_stats_dirs`` (stage 4);
3. ``spk_train`` (stage 5; the test trials are the validation set, as in ESPnet's
   VoxCeleb recipe, where ``valid_set`` and ``test_sets`` are both VoxCeleb1-O);
4. ``spk_embed_extract`` (stage 6) writes ``<set>_embeddings.npz``;
5. score the trials (cosine similarity) and compute the EER with our own functions
   (stages 7-8 use scripts of ESPnet's recipe tree, not installed with the package).
"""

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from espnet2.fileio.read_text import read_2columns_text
from stages import run_stage
from tone_corpus import make_corpus

from espnet_imlspike.scoring.verification import equal_error_rate, score_trials

FOLD_LENGTH = "120000"  # spk.sh's default fold_length (samples)


def subset_data_dir(src: Path, dst: Path, speakers: Sequence[str]) -> Path:
    """Copy the utterances of ``speakers`` from data dir ``src`` to ``dst``.

    Writes wav.scp, utt2spk, spk2utt and category2utt (spk.sh's copy of spk2utt, read by
    ESPnet's category iterator).
    """
    keep = set(speakers)
    utt2spk = {u: s for u, s in read_2columns_text(src / "utt2spk").items() if s in keep}
    if set(utt2spk.values()) != keep:
        raise ValueError(f"speakers {sorted(keep - set(utt2spk.values()))} not in {src}")
    wavs = read_2columns_text(src / "wav.scp")
    dst.mkdir(parents=True, exist_ok=True)
    with open(dst / "wav.scp", "w") as scp, open(dst / "utt2spk", "w") as u2s:
        for utt in sorted(utt2spk):
            scp.write(f"{utt} {wavs[utt]}\n")
            u2s.write(f"{utt} {utt2spk[utt]}\n")
    spk2utt = "".join(
        f"{spk} {' '.join(sorted(u for u, s in utt2spk.items() if s == spk))}\n"
        for spk in sorted(keep)
    )
    (dst / "spk2utt").write_text(spk2utt)
    (dst / "category2utt").write_text(spk2utt)
    return dst


def write_trials(data_dir: Path) -> int:
    """Write every pair of distinct utterances as a verification trial; return the count.

    ``trial.scp`` / ``trial2.scp`` map the key ``<utt1>*<utt2>`` to the two wav files and
    ``trial_label`` to 1 (same speaker) or 0, as ESPnet's SPK recipes lay them out.
    """
    wavs = read_2columns_text(data_dir / "wav.scp")
    utt2spk = read_2columns_text(data_dir / "utt2spk")
    pairs = list(itertools.combinations(sorted(wavs), 2))
    with open(data_dir / "trial.scp", "w") as t1, open(
        data_dir / "trial2.scp", "w"
    ) as t2, open(data_dir / "trial_label", "w") as lab:
        for first, second in pairs:
            key = f"{first}*{second}"
            t1.write(f"{key} {wavs[first]}\n")
            t2.write(f"{key} {wavs[second]}\n")
            lab.write(f"{key} {int(utt2spk[first] == utt2spk[second])}\n")
    return len(pairs)


def make_speaker_corpus(
    out_dir: Path, num_speakers: int = 8, train_per_speaker: int = 8,
    test_per_speaker: int = 5, seed: int = 0,
) -> Dict[str, Path]:
    """Tone corpus split by speaker: even-numbered speakers train, odd ones are tested.

    The pitch factors of the two groups interleave, so test speakers are unseen but lie
    inside the training range.

    Returns:
        {"train": data dir, "test": data dir with trials}.
    """
    if num_speakers < 4:
        raise ValueError(f"num_speakers must be >= 4, got {num_speakers}")
    source = make_corpus(
        Path(out_dir) / "source",
        {"train": train_per_speaker * num_speakers, "test": test_per_speaker * num_speakers},
        num_speakers=num_speakers,
        seed=seed,
    )
    speakers = [f"spk{i:02d}" for i in range(num_speakers)]
    data = Path(out_dir) / "data"
    dirs = {
        "train": subset_data_dir(source["train"], data / "train", speakers[0::2]),
        "test": subset_data_dir(source["test"], data / "test", speakers[1::2]),
    }
    write_trials(dirs["test"])
    return dirs


def collect_stats(out_dir: Path, config: Path, dirs: Dict[str, Path]) -> Path:
    """spk.sh stage 4 with one job: shape files of the training and trial sets."""
    python = sys.executable
    stats_dir = out_dir / "spk_stats"
    logdir = stats_dir / "logdir"
    logdir.mkdir(parents=True, exist_ok=True)
    # utils/split_scp.pl with a single output copies the key file
    (logdir / "train.1.scp").write_text((dirs["train"] / "wav.scp").read_text())
    (logdir / "valid.1.scp").write_text((dirs["test"] / "trial.scp").read_text())
    spk_num = str(len(read_2columns_text(dirs["train"] / "spk2utt")))
    run_stage(
        [python, "-m", "espnet2.bin.spk_train", "--collect_stats", "true",
         "--use_preprocessor", "false",
         "--train_data_path_and_name_and_type", f"{dirs['train']}/wav.scp,speech,sound",
         "--valid_data_path_and_name_and_type", f"{dirs['test']}/trial.scp,speech,sound",
         "--train_shape_file", str(logdir / "train.1.scp"),
         "--valid_shape_file", str(logdir / "valid.1.scp"),
         "--spk2utt", str(dirs["train"] / "spk2utt"), "--spk_num", spk_num,
         "--output_dir", str(logdir / "stats.1"), "--config", str(config),
         "--ngpu", "0"],
        logdir / "stats.1.log",
    )
    run_stage(
        [python, "-m", "espnet2.bin.aggregate_stats_dirs",
         "--input_dir", str(logdir / "stats.1"), "--skip_sum_stats",
         "--output_dir", str(stats_dir)],
        logdir / "aggregate.log",
    )
    (stats_dir / "valid" / "speech_shape2").write_text(
        (stats_dir / "valid" / "speech_shape").read_text()
    )
    return stats_dir


def train(
    out_dir: Path, config: Path, dirs: Dict[str, Path], stats_dir: Path,
    extra_args: Sequence[str] = (), tag: str = "spk",
) -> Path:
    """spk.sh stage 5 (the command launch.py would run): returns the experiment dir."""
    exp_dir = out_dir / "exp" / f"spk_{tag}"
    train_dir, valid_dir = dirs["train"], dirs["test"]
    run_stage(
        [sys.executable, "-m", "espnet2.bin.spk_train",
         "--use_preprocessor", "true", "--resume", "true",
         "--ignore_init_mismatch", "false",
         "--output_dir", str(exp_dir),
         "--train_data_path_and_name_and_type", f"{train_dir}/wav.scp,speech,sound",
         "--train_data_path_and_name_and_type", f"{train_dir}/utt2spk,spk_labels,text",
         "--train_shape_file", f"{stats_dir}/train/speech_shape",
         "--valid_data_path_and_name_and_type", f"{valid_dir}/trial.scp,speech,sound",
         "--valid_data_path_and_name_and_type", f"{valid_dir}/trial2.scp,speech2,sound",
         "--valid_data_path_and_name_and_type", f"{valid_dir}/trial_label,spk_labels,text",
         "--spk2utt", f"{train_dir}/spk2utt",
         "--spk_num", str(len(read_2columns_text(train_dir / "spk2utt"))),
         "--fold_length", FOLD_LENGTH,
         "--valid_shape_file", f"{stats_dir}/valid/speech_shape",
         "--config", str(config),
         "--ngpu", "0", "--seed", "0", "--use_tensorboard", "false", *extra_args],
        out_dir / "logs" / f"train_{tag}.log",
    )
    return exp_dir


def extract_embeddings(
    out_dir: Path, exp_dir: Path, test_dir: Path, stats_dir: Path,
    decode_config: Path, model_file: str = "valid.eer.best.pth", tag: str = "spk",
) -> Path:
    """spk.sh stage 6: ``spk_embed_extract``; returns the ``<set>_embeddings.npz`` path."""
    infer_dir = exp_dir / "inference"
    # spk_embed_extract writes into --output_dir without creating it (spk.sh's
    # launch.py creates it for its log file)
    infer_dir.mkdir(parents=True, exist_ok=True)
    run_stage(
        [sys.executable, "-m", "espnet2.bin.spk_embed_extract",
         "--use_preprocessor", "true",
         "--output_dir", str(infer_dir),
         "--data_path_and_name_and_type", f"{test_dir}/trial.scp,speech,sound",
         "--data_path_and_name_and_type", f"{test_dir}/trial2.scp,speech2,sound",
         "--data_path_and_name_and_type", f"{test_dir}/trial_label,spk_labels,text",
         "--shape_file", f"{stats_dir}/valid/speech_shape",
         "--fold_length", FOLD_LENGTH,
         "--config", str(decode_config),
         "--spk_train_config", str(exp_dir / "config.yaml"),
         "--spk_model_file", str(exp_dir / model_file),
         "--ngpu", "0"],
        out_dir / "logs" / f"extract_{tag}.log",
    )
    return infer_dir / f"{test_dir.name}_embeddings.npz"


def run_verification(
    out_dir: Path, config: Path, decode_config: Path, dirs: Dict[str, Path],
    extra_train_args: Sequence[str] = (), tag: str = "spk",
) -> Dict[str, object]:
    """Collect stats (once per out_dir), train, extract, score; return paths and the EER."""
    stats_dir = out_dir / "spk_stats"
    if not (stats_dir / "valid" / "speech_shape2").exists():
        stats_dir = collect_stats(out_dir, config, dirs)
    exp_dir = train(out_dir, config, dirs, stats_dir, extra_train_args, tag)
    npz = extract_embeddings(out_dir, exp_dir, dirs["test"], stats_dir, decode_config,
                             tag=tag)
    embeddings = dict(np.load(npz))
    scores, labels = score_trials(embeddings, dirs["test"] / "trial_label")
    return {"exp": exp_dir, "embeddings": npz, "scores": scores, "labels": labels,
            "eer": equal_error_rate(scores, labels)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", type=Path, default=Path("spk_demo_out"))
    parser.add_argument(
        "--config", type=Path, nargs="+", required=True,
        help="one or more spk_train configs; each is trained and evaluated",
    )
    parser.add_argument("--decode_config", type=Path, required=True)
    parser.add_argument("--num_speakers", type=int, default=8)
    parser.add_argument("--max_epoch", type=int, default=None)
    args = parser.parse_args(argv)
    for path in [*args.config, args.decode_config]:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    start = time.time()
    dirs = make_speaker_corpus(args.out_dir, num_speakers=args.num_speakers)
    extra = [] if args.max_epoch is None else ["--max_epoch", str(args.max_epoch)]
    results = []
    for config in args.config:
        tag = config.stem.replace("train_spk_", "").replace("train_", "")
        result = run_verification(args.out_dir, config, args.decode_config, dirs, extra, tag)
        results.append((tag, result))
    print("\n| model | test EER (%) | trials |\n|---|---|---|")
    for tag, result in results:
        print(f"| {tag} | {100 * result['eer']:.1f} | {len(result['labels'])} |")
    print(f"\nunseen test speakers, chance EER = 50%. {time.time() - start:.0f} s in all.")


if __name__ == "__main__":
    main()
