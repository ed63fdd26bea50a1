"""Multi-GPU, mixed precision and resume through ESPnet's own launcher (issue: real GPUs).

Every run is the stock ``python -m espnet2.bin.asr_train`` (through bench/espnet_device.py,
with bench/distributed/sitecustomize.py in every process) on the synthetic AISHELL-like
corpus of bench/stock_train.py (npy features, 300-1600 frames, 4233 tokens), with the
shipped paper-size config ``conf/asr/aishell/train_asr_iml_spikeformer.yaml`` (12x256,
T=6, IMLS, HD-RepSSA_S) unless a run names another. Runs, each a fresh process tree:

* ``fp32_1gpu`` / ``fp32_2gpu``: ``--ngpu 1`` and ``--ngpu 2 --multiprocessing_distributed
  true`` (NCCL), the same global batch (ESPnet splits each mini-batch over the ranks);
  loss curves compared; each rank's IMLS statistics dumped after training and compared.
  ``transformer``: the stock Transformer config the same way (what 2 GPUs cost ESPnet
  itself); ``nographs``: the IML 2-GPU run with ``IMLSPIKE_CUDA_GRAPHS=0``;
  ``ddpgraphs``: the IML 2-GPU run with CUDA graphs under DDP (``IMLSPIKE_DDP_GRAPHS=1``,
  now also the default, so ``fp32``'s 2-GPU run has them too; ``nographs`` runs without),
  its statistics and losses compared with ``fp32_1gpu``.
* ``bf16amp_1gpu``: ``--use_amp true`` as ESPnet 202511 does it on an H100 (bfloat16
  autocast and a GradScaler); ``fp16amp_1gpu``: the same with float16 autocast; with
  ``fp32_long``, an fp32 run of the same length to compare with (``--amp_iters``
  iterations; the three run side by side, one or two per GPU: not timed).
* ``resume``: 3 epochs uninterrupted, and the same run killed (SIGKILL) in the middle of
  epoch 2 then restarted with ``--resume true``; final statistics compared.
* ``sdt_2gpu``, ``multistep_2gpu``: the Spike-driven Transformer baseline and the
  multi-step ablation under the same launcher, at batch 16 and 32 (10 iterations), for
  peak memory per GPU.

    python bench/distributed/run_checks.py --out /tmp/dist [--runs ...] [--smoke]

Writes ``summary.json`` and ``summary.md`` under --out, and each run's log.
"""

import argparse
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("stock_train", REPO / "bench/stock_train.py")
stock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stock)

CONF = REPO / "conf/asr/aishell"
# a number as ESPnet prints it (its log sometimes drops the comma after one: "41.1acc=")
NUMBER = r"([-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))"
LOSS = re.compile(r"(\d+)epoch:train:(\d+)-(\d+)batch: .*?\bloss=" + NUMBER)
# ESPnet logs ``loss`` times the world size under DDP; ``loss_att`` is comparable
LOSS_ATT = re.compile(r"\d+epoch:train:\d+-\d+batch: .*?\bloss_att=" + NUMBER)
CACHED = re.compile(r"gpu_max_cached_mem_GB=([-0-9.e+]+)")
SKIPPED = re.compile(r"grad norm is (nan|inf)", re.IGNORECASE)


def environment(out: Path, extra=None):
    site = str(REPO / "bench/distributed")
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH"))
                                          if p),
               IMLSPIKE_RANK_DUMP=str(out / "ranks"))
    # NVLink multicast stays off (the lent machines' rule), also for spawned ranks
    env.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
               NVSHMEM_DISABLE_NVLS="1")
    env.update(extra or {})
    return env


def command(config, data, tokens, out, iters, smoke, *, ngpu=1, amp=False, epochs=1,
            batch=32, resume=False):
    cmd = stock.train_command(config, data, tokens, out / "exp", iters,
                              "bf16" if amp else "fp32", smoke)
    cmd += ["--max_epoch", str(epochs), "--resume", str(resume).lower(),
            "--log_interval", "1" if smoke else "10", "--batch_size", str(batch)]
    if ngpu > 1 and not smoke:
        cmd += ["--ngpu", str(ngpu), "--multiprocessing_distributed", "true",
                "--dist_init_method", f"file://{out}/.dist_init"]
    return cmd


VALID = re.compile(r"\[valid\] .*?\bloss_att=" + NUMBER)


def parse(log: str):
    losses = [(int(e), int(end), float(v)) for e, _, end, v in LOSS.findall(log)]
    cached = [float(c) for c in CACHED.findall(log)]
    marks, _ = stock.parse_log(log)  # (iteration, seconds since the epoch started)
    timing = {}
    if marks:
        count, total = marks[-1]
        half = [m for m in marks if m[0] <= count // 2]
        base = half[-1] if half else (0, 0.0)
        timing = {"step_s_mean": total / count,
                  "step_s_second_half": (total - base[1]) / max(1, count - base[0])}
    valid = [float(v) for v in VALID.findall(log)]
    return {"losses": losses, "loss_att": [float(v) for v in LOSS_ATT.findall(log)],
            "gpu_max_cached_gib": max(cached) if cached else None,
            "skipped_steps": len(SKIPPED.findall(log)),
            "nonfinite_losses": sum(not math.isfinite(v) for _, _, v in losses),
            "valid_loss_att": valid[-1] if valid else None, **timing}


def run(name, cmd, env, out, timeout=540, kill_when=None, log_name="train.log"):
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    with open(out / log_name, "w") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        killed = False
        while process.poll() is None:
            time.sleep(1)
            if kill_when and re.search(kill_when, (out / log_name).read_text()):
                os.killpg(process.pid, signal.SIGKILL)  # the whole process tree
                killed = True
                break
            if time.perf_counter() - begin > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                break
        code = process.wait()
    text = (out / log_name).read_text()
    result = {"name": name, "returncode": code, "killed_on_purpose": killed,
              "wall_s": time.perf_counter() - begin, **parse(text)}
    if code and not killed:
        result["error"] = text[-2500:]
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("losses", "loss_att", "error")}),
          flush=True)
    return result


def rank_stats(folder: Path):
    import torch

    return {p.stem: torch.load(p) for p in sorted(folder.glob("rank*.pt"))}


def ranks_equal(ranks) -> bool:
    """Whether both ranks dumped statistics and every one is bitwise equal."""
    import torch

    return len(ranks) == 2 and all(torch.equal(ranks["rank0"][k], ranks["rank1"][k])
                                   for k in ranks["rank0"])


def compare_stats(a, b):
    """Largest relative difference of running_max between two statistic dicts, and
    whether every statistic is finite."""
    import torch

    worst, finite = 0.0, True
    for key, value in a.items():
        if key.endswith("running_max"):
            other = b[key]
            finite &= bool(torch.isfinite(value).all() and torch.isfinite(other).all())
            worst = max(worst, float(((value - other).abs() / other.abs().clamp(min=1e-6)).max()))
    return worst, finite


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--amp_iters", type=int, default=None,
                        help="iterations of the AMP runs and their fp32 reference")
    parser.add_argument("--runs", nargs="+", default=["fp32", "amp", "resume", "baselines"],
                        help="fp32 transformer nographs ddpgraphs amp resume baselines multistep")
    parser.add_argument("--timeout", type=int, default=540, help="seconds per run")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, plumbing only")
    args = parser.parse_args(argv)
    iters = 4 if args.smoke else args.iters
    data = args.out / "corpus"
    tokens = stock.make_corpus(data, 24 if args.smoke else 1200,
                               *((100, 200) if args.smoke else (300, 1600)))
    iml = CONF / "train_asr_iml_spikeformer.yaml"
    results, summary = {}, {}

    def save():
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    def go(name, config=iml, extra_env=None, gpu=None, **kw):
        out = args.out / name
        env = environment(out, extra_env)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        timeout = kw.pop("timeout", args.timeout)
        kill_when = kw.pop("kill_when", None)
        log_name = "train_resumed.log" if kw.get("resume") else "train.log"
        results[name] = run(name, command(config, data, tokens, out, kw.pop("iters", iters),
                                          args.smoke, **kw), env, out, timeout, kill_when,
                            log_name)
        results[name]["ranks"] = rank_stats(out / "ranks")
        return results[name]

    if "fp32" in args.runs:
        one, two = go("fp32_1gpu"), go("fp32_2gpu", ngpu=2)
        a, b = one["loss_att"], two["loss_att"]
        n = min(len(a), len(b))
        ranks = two["ranks"]
        equal = ranks_equal(ranks)
        summary["ddp"] = {
            "ranks_dumped": sorted(ranks), "rank_statistics_bitwise_equal": bool(equal),
            "loss_att_1gpu": a[:n], "loss_att_2gpu": b[:n],
            "max_rel_loss_att_gap": max((abs(x - y) / abs(x) for x, y in zip(a, b)), default=None),
            "wall_s": [one["wall_s"], two["wall_s"]],
            "step_s_mean": [one.get("step_s_mean"), two.get("step_s_mean")],
            "step_s_second_half": [one.get("step_s_second_half"),
                                   two.get("step_s_second_half")],
            "valid_loss_att": [one["valid_loss_att"], two["valid_loss_att"]],
            "gpu_max_cached_gib": [one["gpu_max_cached_gib"], two["gpu_max_cached_gib"]],
        }
        save()
    timing_keys = ("returncode", "step_s_mean", "step_s_second_half", "gpu_max_cached_gib",
                   "valid_loss_att", "wall_s")
    if "transformer" in args.runs:
        transformer = CONF / "train_asr_transformer_30.35m.yaml"
        for name, kw in (("transformer_1gpu", {}), ("transformer_2gpu", {"ngpu": 2})):
            r = go(name, config=transformer, **kw)
            summary[name] = {k: r.get(k) for k in timing_keys}
            save()
    if "ddpgraphs" in args.runs:
        r = go("ddpgraphs_2gpu", ngpu=2, extra_env={"IMLSPIKE_DDP_GRAPHS": "1"})
        entry = {k: r.get(k) for k in timing_keys}
        entry["rank_statistics_bitwise_equal"] = ranks_equal(r["ranks"])
        entry["graphs_turned_off"] = "CUDA graphs of the spiking encoder turned off" in (
            args.out / "ddpgraphs_2gpu" / "train.log").read_text()
        summary["ddpgraphs_2gpu"] = entry
        save()
    if "nographs" in args.runs:
        r = go("nographs_2gpu", ngpu=2, extra_env={"IMLSPIKE_CUDA_GRAPHS": "0"})
        summary["nographs_2gpu"] = {k: r.get(k) for k in timing_keys}
        save()
    if args.amp_iters and "amp" in args.runs:  # side by side, untimed
        amp_iters = args.amp_iters
        jobs = (("fp32amp_reference", {}, False, 0),
                ("bf16amp_1gpu", {}, True, 0),
                ("fp16amp_1gpu", {"IMLSPIKE_FORCE_FP16": "1"}, True, 1))
        threads = [threading.Thread(target=go, args=(name,), kwargs=dict(
            extra_env=extra, amp=amp, gpu=gpu, iters=amp_iters))
            for name, extra, amp, gpu in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        summary["fp32amp_reference"] = {
            k: results["fp32amp_reference"].get(k)
            for k in ("returncode", "nonfinite_losses", "valid_loss_att")}
        summary["fp32amp_reference"]["final_losses"] = [
            v for _, _, v in results["fp32amp_reference"]["losses"][-3:]]
    if "amp" in args.runs:
        if not args.amp_iters:
            for name, extra in (("bf16amp_1gpu", {}),
                                ("fp16amp_1gpu", {"IMLSPIKE_FORCE_FP16": "1"})):
                go(name, extra_env=extra, amp=True)
        fp32 = "fp32amp_reference" if args.amp_iters else "fp32_1gpu"
        reference = results.get(fp32, {}).get("ranks", {}).get("rank0")
        for name in ("bf16amp_1gpu", "fp16amp_1gpu"):
            if name not in results:
                continue
            stats = results[name]["ranks"].get("rank0", {})
            entry = {k: results[name].get(k) for k in (
                "returncode", "nonfinite_losses", "skipped_steps", "gpu_max_cached_gib",
                "wall_s", "valid_loss_att")}
            entry["final_losses"] = [v for _, _, v in results[name]["losses"][-3:]]
            if reference is not None and stats:
                entry["thresholds_max_rel_diff_vs_fp32"], entry["thresholds_finite"] = \
                    compare_stats(stats, reference)
            summary[name] = entry
            save()
    if "resume" in args.runs:
        per_epoch = max(4, iters // 4)
        whole = go("resume_reference", epochs=3, iters=per_epoch)
        go("resume_killed", epochs=3, iters=per_epoch, kill_when=r"2epoch:train:\d+-\d+batch")
        resumed = go("resume_killed", epochs=3, iters=per_epoch, resume=True)
        log = (args.out / "resume_killed" / "train_resumed.log").read_text()
        killed = (args.out / "resume_killed" / "train.log").read_text()
        worst, finite = compare_stats(resumed["ranks"].get("rank0", {}),
                                      whole["ranks"].get("rank0", {}))
        summary["resume"] = {"resumed_from_checkpoint": "resumed" in log.lower(),
                             "killed_in_epoch_2": "2epoch:train" in killed
                             and "3/3epoch started" not in killed,
                             "returncode": resumed["returncode"],
                             "final_thresholds_max_rel_diff_vs_uninterrupted": worst,
                             "finite": finite,
                             "final_loss": [whole["losses"][-1:], resumed["losses"][-1:]]}
        save()
    baselines = [("sdt", "train_asr_spike_driven_transformer.yaml")] * ("baselines" in args.runs)
    if "baselines" in args.runs or "multistep" in args.runs:
        baselines.append(("multistep", "train_asr_iml_spikeformer_ablation_multistep.yaml"))
    if baselines:
        entries = {}
        for name, config in baselines:
            for batch in ((16, 32) if name == "sdt" else (32,)):
                r = go(f"{name}_2gpu_b{batch}", config=CONF / config, ngpu=2, batch=batch,
                       iters=10 if not args.smoke else 2)
                entries[f"{name}_b{batch}"] = {"returncode": r["returncode"],
                                               "gpu_max_cached_gib": r["gpu_max_cached_gib"],
                                               "wall_s": r["wall_s"]}
                summary["baselines_2gpu"] = entries
                save()
    save()
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
