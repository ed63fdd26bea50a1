"""Training speed and memory through the stock entry point (``espnet2.bin.asr_train``).

Generates a synthetic AISHELL-like corpus (80-dim features as ``npy``, 300-1600 frames,
a 4233-word token list, about one token per 30 frames), then trains each shipped config
(``conf/asr/aishell/``, only the encoder differs) with ESPnet's own trainer, batch
sampler (``folded``, batch 32, fold length 800) and data loader for ``--steps``
iterations (mini-batches; the configs' accum_grad 2 makes an optimizer step every two),
one model after the other on one device. Step time is wall time from ESPnet's "epoch
started" log line to its log line after the last iteration, over the iterations (data
loading included), so one-time costs (CUDA-graph captures) are included; "last 100" is
the same over the last 100 iterations only. Peak memory is the process's CUDA
allocator peak (``IMLSPIKE_MEMORY_JSON``, reserved and allocated) and ESPnet's logged
``gpu_max_cached_mem_GB``; the allocated peak misses the CUDA-graph pool (its tensors are
allocated once, at capture), so "allocated + graph pool" adds the pool held at exit.

    python bench/stock_train.py --out bench/out --precision bf16 fp32
    python bench/stock_train.py --smoke --out /tmp/st   # CPU, tiny models, 4 steps

``--cold`` gives each model run its own empty Triton cache (``TRITON_CACHE_DIR``): every
run then pays the kernels' compilation, as a machine's first run does.

``--recipe librispeech`` trains the LibriSpeech configs instead (``conf/asr/librispeech/``,
18 blocks of 512, conv2d6, ESPnet's ``numel`` batches) on LibriSpeech-like utterances
(3-24 s, a 5000-token list). The recipe's ``batch_bins: 16000000`` counts raw 16 kHz
samples (1000 s of audio a batch); here the features are 80-dim frames of 10 ms, so the
same audio per batch is ``--batch_bins 8000000``. The utterances share a pool of feature
files (``--pool``), so a corpus of many hours stays small on disk.
"""

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded from elsewhere
from common import SUFFIX_ENVIRONMENT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf/asr/aishell"
MODELS = {  # name: (config, environment, extra arguments)
    "transformer": ("train_asr_transformer_30.35m.yaml", {}, []),
    "iml_imls_t6": ("train_asr_iml_spikeformer.yaml", {}, []),
    "iml_imls_t6@ref": ("train_asr_iml_spikeformer.yaml", {"IMLSPIKE_FAST": "0"}, []),
    "iml_multistep_t6": ("train_asr_iml_spikeformer_ablation_multistep.yaml", {}, []),
    # the Transformer config without encoder blocks: what every model pays besides them
    "no_encoder_blocks": ("train_asr_transformer_30.35m.yaml", {},
                          ["--encoder_conf", "num_blocks=0"]),
}
# the default with one fast path switched (bench/common.py's suffixes)
MODELS.update({
    f"iml_imls_t6@{suffix}": ("train_asr_iml_spikeformer.yaml", {variable: value}, [])
    for suffix, (variable, value) in SUFFIX_ENVIRONMENT.items()})
# recipe: (config folder, its config for each aishell config name, frames (low, high),
# token list size, extra arguments)
RECIPES = {
    "aishell": (CONF, {}, (300, 1600), 4233, []),
    "librispeech": (REPO / "conf/asr/librispeech",
                    {"train_asr_transformer_30.35m.yaml": "train_asr_transformer_e18.yaml",
                     "train_asr_iml_spikeformer.yaml": "train_asr_iml_spikeformer_e18.yaml"},
                    (300, 2400), 5000, ["--batch_bins", "8000000"]),
}


def make_corpus(root: Path, utterances: int, low: int, high: int, seed: int = 0,
                vocab: int = 4233, pool: int = 0):
    """Kaldi-style dirs with npy features, text, shape files; and a token list. With
    ``pool``, the training utterances reuse ``pool`` feature files in turn."""
    rng = np.random.default_rng(seed)
    tokens = ["<blank>", "<unk>"] + [f"w{i}" for i in range(vocab - 3)] + ["<sos/eos>"]
    (root / "tokens.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "tokens.txt").write_text("\n".join(tokens) + "\n")
    for name, count in (("train", utterances), ("valid", 16)):
        folder = root / name
        (folder / "feats").mkdir(parents=True, exist_ok=True)
        scp, text, speech_shape, text_shape = [], [], [], []
        files = {}  # file index: (path, frames)
        for index in range(count):
            key = f"{name}{index:06d}"
            file_index = index % pool if pool and name == "train" else index
            if file_index not in files:
                frames = int(rng.integers(low, high + 1))
                path = folder / "feats" / f"{key}.npy"
                np.save(path, rng.standard_normal((frames, 80), dtype=np.float32))
                files[file_index] = (path, frames)
            path, frames = files[file_index]
            words = [f"w{i}" for i in rng.integers(0, vocab - 3, max(1, frames // 30))]
            scp.append(f"{key} {path}")
            text.append(f"{key} {' '.join(words)}")
            speech_shape.append(f"{key} {frames},80")
            text_shape.append(f"{key} {len(words)}")
        for file, lines in (("feats.scp", scp), ("text", text),
                            ("speech_shape", speech_shape), ("text_shape", text_shape)):
            (folder / file).write_text("\n".join(lines) + "\n")
    return root / "tokens.txt"


def train_command(config: Path, data: Path, tokens: Path, out: Path, steps: int,
                  precision: str, smoke: bool):
    command = [sys.executable, str(REPO / "bench/espnet_device.py"), "-m",
               "espnet2.bin.asr_train", "--config", str(config),
               "--token_list", str(tokens), "--token_type", "word", "--input_size", "80",
               "--use_preprocessor", "true", "--cleaner", "none", "--g2p", "none",
               "--output_dir", str(out), "--max_epoch", "1", "--num_iters_per_epoch",
               str(steps), "--log_interval", str(max(1, min(25, steps // 4))),
               "--num_workers", "2", "--seed", "0", "--resume", "false",
               "--use_tensorboard", "false", "--use_amp", str(precision == "bf16").lower(),
               "--ngpu", "0" if smoke else "1", "--fold_length", "800",
               "--fold_length", "150", "--keep_nbest_models", "1",
               "--num_att_plot", "0"]
    for prefix in ("train", "valid"):
        folder = data / prefix
        command += [f"--{prefix}_data_path_and_name_and_type", f"{folder}/feats.scp,speech,npy",
                    f"--{prefix}_data_path_and_name_and_type", f"{folder}/text,text,text",
                    f"--{prefix}_shape_file", f"{folder}/speech_shape",
                    f"--{prefix}_shape_file", f"{folder}/text_shape"]
    if smoke:
        command += ["--encoder_conf", "num_blocks=1", "--encoder_conf", "linear_units=64",
                    "--encoder_conf", "output_size=32", "--decoder_conf", "num_blocks=1",
                    "--decoder_conf", "linear_units=64", "--batch_size", "4"]
    return command


STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
STARTED = re.compile(STAMP + r".*?1/\d+epoch started")
INTERVAL = re.compile(STAMP + r".*?1epoch:train:(\d+)-(\d+)batch: ")
CACHED = re.compile(r"\[train\].*?gpu_max_cached_mem_GB=([-0-9.e+]+)")


def seconds(stamp: str) -> float:
    day, clock = stamp.split(" ")
    hours, minutes, rest = clock.split(":")
    return (int(day[-2:]) * 86400 + int(hours) * 3600 + int(minutes) * 60
            + float(rest.replace(",", ".")))


def parse_log(text: str):
    """(iteration, seconds since the epoch started) at each logged interval, and ESPnet's
    gpu_max_cached_mem_GB. ESPnet's ``train_time`` is registered once per optimizer step
    (accum_grad iterations), so the log's timestamps are used instead."""
    started = STARTED.search(text)
    if started is None:
        return [], None
    start = seconds(started.group(1))
    marks = [(int(end), seconds(stamp) - start) for stamp, _, end in INTERVAL.findall(text)]
    cached = CACHED.findall(text)
    return marks, (float(cached[-1]) if cached else None)


def run_model(name, precision, data, tokens, out, steps, smoke, cold=False,
              recipe="aishell", step_profile=None):
    config_file, env_extra, extra = MODELS[name.split(":")[0]]
    folder, configs, _, _, recipe_extra = RECIPES[recipe]
    if recipe != "aishell" and config_file not in configs:
        raise SystemExit(f"model {name!r} has no {recipe} config")
    config_file, extra = configs.get(config_file, config_file), recipe_extra + extra
    if ":" in name:
        steps = int(name.split(":")[1])
    run_dir = out / f"{name.replace('@', '_').replace(':', '_')}_{precision}"
    memory = run_dir / "memory.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, IMLSPIKE_MEMORY_JSON=str(memory), PYTHONWARNINGS="ignore",
               **env_extra)
    if step_profile:  # bench/step_profile.py: a few steps under the PyTorch profiler
        env.update(IMLSPIKE_STEP_PROFILE=str(run_dir / "step_profile.json"),
                   IMLSPIKE_STEP_PROFILE_STEPS=step_profile)
    if cold:  # a machine's first run: an empty Triton cache of its own
        env["TRITON_CACHE_DIR"] = str(run_dir / "triton_cache")
        shutil.rmtree(env["TRITON_CACHE_DIR"], ignore_errors=True)
    begin = time.perf_counter()
    done = subprocess.run(train_command(folder / config_file, data, tokens, run_dir / "exp",
                                        steps, precision, smoke) + extra,
                          env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - begin
    log = done.stdout + done.stderr
    (run_dir / "train.log").write_text(log)
    marks, cached = parse_log(log)
    count, total = marks[-1] if marks else (0, float("nan"))
    # steady state: the last 100 iterations (or the second half of a shorter run)
    before = [m for m in marks if m[0] <= count - min(100, count // 2)]
    base = before[-1] if before else (0, 0.0)
    steady = (total - base[1]) / (count - base[0]) if count > base[0] else float("nan")
    row = {"model": name, "precision": precision, "returncode": done.returncode,
           "steps": count, "step_s_mean": total / count if count else float("nan"),
           "step_s_last100": steady, "one_time_s": total - count * steady if count else None,
           "process_wall_s": wall, "espnet_gpu_max_cached_gib": cached, "marks": marks}
    if memory.exists():
        row.update(json.loads(memory.read_text()))
    if (run_dir / "step_profile.json").exists():
        profiled = json.loads((run_dir / "step_profile.json").read_text())
        row["step_profile"] = {k: v for k, v in profiled.items() if not isinstance(v, list)}
    if done.returncode:
        row["error"] = log[-3000:]
    return row


def table(rows):
    lines = ["| model | precision | steps | mean step incl. one-time (ms) | vs Transformer | "
             "last-100 mean (ms) | one-time (s) | peak reserved (GiB) | vs Transformer | "
             "peak allocated (GiB) | vs Transformer | allocated + graph pool (GiB) | "
             "vs Transformer |", "|" + "---|" * 13]
    for row in rows:  # a graph pool's memory serves no eager tensor: counted beside
        row["allocated_and_pool_gib"] = (row.get("max_allocated_gib", float("nan"))
                                         + row.get("exit_graph_pool_gib", 0.0))
    for row in rows:
        base = _baseline(rows, row)
        ratio = lambda key: row.get(key, float("nan")) / base.get(key, float("nan"))  # noqa
        name = row["model"] + (f" (round {row['round']})" if "round" in row else "")
        lines.append(
            f"| {name} | {row['precision']} | {row['steps']} | "
            f"{row['step_s_mean'] * 1e3:.1f} | x{ratio('step_s_mean'):.2f} | "
            f"{row['step_s_last100'] * 1e3:.1f} | {row['one_time_s'] or 0:.2f} | "
            f"{row.get('max_reserved_gib', float('nan')):.2f} | x{ratio('max_reserved_gib'):.2f} | "
            f"{row.get('max_allocated_gib', float('nan')):.2f} | "
            f"x{ratio('max_allocated_gib'):.2f} | {row['allocated_and_pool_gib']:.2f} | "
            f"x{ratio('allocated_and_pool_gib'):.2f} |")
    if any("round" in row for row in rows):
        lines += ["", "Median over rounds of each round's ratio to that round's Transformer "
                  "(min-max):", "", "| model | precision | mean step incl. one-time | "
                  "last 100 | peak reserved |", "|---|---|---|---|---|"]
        for model, precision in dict.fromkeys((r["model"], r["precision"]) for r in rows):
            same = [r for r in rows if r["model"] == model and r["precision"] == precision]
            cells = []
            for key in ("step_s_mean", "step_s_last100", "max_reserved_gib"):
                ratios = sorted(r.get(key, float("nan")) / _baseline(rows, r).get(
                    key, float("nan")) for r in same)
                cells.append(f"x{statistics.median(ratios):.2f} "
                             f"({ratios[0]:.2f}-{ratios[-1]:.2f})")
            lines.append(f"| {model} | {precision} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _baseline(rows, row):
    """The Transformer row of the same precision (and round) as ``row``."""
    return next((r for r in rows if r["model"] == "transformer"
                 and r["precision"] == row["precision"]
                 and r.get("round") == row.get("round")), row)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--utterances", type=int, default=1200)
    parser.add_argument("--precision", nargs="+", default=["bf16"], choices=["bf16", "fp32"])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="names of MODELS, optionally ':steps' (e.g. iml_multistep_t6:100)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the model list this many times in turn (machines drift: "
                        "each round's ratios are taken to its own Transformer run)")
    parser.add_argument("--recipe", choices=list(RECIPES), default="aishell")
    parser.add_argument("--pool", type=int, default=0,
                        help="feature files the training utterances share (0: one each)")
    parser.add_argument("--cold", action="store_true",
                        help="each model run with its own empty Triton cache (a first run)")
    parser.add_argument("--step-profile", metavar="FIRST:COUNT",
                        help="profile COUNT iterations after iteration FIRST of each run "
                        "(bench/step_profile.py; those steps are slower: keep them out of "
                        "the last 100)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.utterances = 4, 24
    data = args.out / "corpus"
    _, _, (low, high), vocab, _ = RECIPES[args.recipe]
    if args.smoke:
        low, high = 100, 200
    tokens = make_corpus(data, args.utterances, low, high, vocab=vocab, pool=args.pool)
    rows = []
    for round_index, precision in itertools.product(range(args.rounds), args.precision):
        for name in args.models:
            out = args.out / f"round{round_index + 1}" if args.rounds > 1 else args.out
            row = run_model(name, precision, data, tokens, out, args.steps, args.smoke,
                            args.cold, args.recipe, args.step_profile)
            if args.rounds > 1:
                row["round"] = round_index + 1
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "marks"}), flush=True)
    report = table(rows)
    print(report)
    (args.out / "stock_train.json").write_text(json.dumps(rows, indent=1))
    (args.out / "stock_train.md").write_text(report + "\n")
    if any(row["returncode"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
