"""Streaming IML-Spikeformer on the CPU: error rates, latency, real-time factor, energy.

Two steps (docs/streaming.md has the recorded run):

    # 1. corpus + training: the tone corpus (4-10 letters, about 1-2 s per utterance),
    #    the full-attention and the streaming tiny models trained by ESPnet's stock
    #    asr_train (stats, train, stock asr_inference of the test set)
    python bench/streaming_latency.py train --out_dir /tmp/streaming_bench
    # 2. measurements on the test set
    python bench/streaming_latency.py measure --out_dir /tmp/streaming_bench \\
        --output bench/results/streaming_latency_cpu

``measure`` (one thread by default) decodes the test set: (1) whole utterances with the
full-attention and the causal model through ESPnet's stock ``Speech2Text`` (joint
CTC/attention, ctc_weight 0.3, and CTC only); (2) the causal model chunk by chunk through
``espnet_imlspike.streaming.Speech2TextStreaming`` for each chunk size, with ESPnet's
block-synchronous search and with the frame-synchronous CTC prefix search; (3) the deploy
form chunk by chunk (binary spike trains, accumulates counted). Each decode is timed
(real-time factor; compute from the last chunk to the final hypothesis). (4) Encoder-only
passes with the energy report's firing-rate hooks price each mode (Eq. 16-17, blocks
only) per second of audio, compare the chunked encoder frames and spike counts with the
causal model's whole-utterance ones, and time each encoder frame's emission after its
newest input sample.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "egs2/_common/pyscripts"))


def train(args) -> None:
    from asr_pipeline import train_and_decode
    from tone_corpus import make_corpus

    dirs = make_corpus(args.out_dir, {"train": 300, "valid": 30, "test": 50},
                       min_letters=4, max_letters=10)
    conf = REPO / "conf/asr/tone_demo"
    for tag, name in (("full", "train_asr_iml_spikeformer_tiny.yaml"),
                      ("streaming", "train_asr_iml_spikeformer_streaming_tiny.yaml")):
        result = train_and_decode(args.out_dir, conf / name, dirs,
                                  ["--max_epoch", "15", "--num_att_plot", "0"], tag=tag)
        print(tag, result, flush=True)


def utterances(data_dir: Path):
    import soundfile
    import torch
    from espnet2.fileio.read_text import read_2columns_text

    texts = read_2columns_text(data_dir / "text")
    for key, path in read_2columns_text(data_dir / "wav.scp").items():
        wave, rate = soundfile.read(path, dtype="float32")
        yield key, torch.from_numpy(wave), rate, texts[key]


def error_rates(hyps, data_dir):
    from asr_pipeline import error_rates as score
    from espnet2.fileio.read_text import read_2columns_text

    return score(read_2columns_text(data_dir / "text"), hyps)


def pieces_of(wave, rate, chunk_ms):
    """The utterance cut into chunks of ``chunk_ms`` (None: one piece)."""
    if chunk_ms is None:
        return [wave]
    step = int(rate * chunk_ms / 1000)
    return [wave[i:i + step] for i in range(0, wave.numel(), step)]


def timed_decode(decoder, data_dir, chunk_ms, streaming):
    """Decode every test utterance; hypotheses, real-time factor and the time from the
    last chunk's arrival to the final hypothesis (compute only)."""
    import torch

    hyps, compute, audio, finals = {}, 0.0, 0.0, []
    _, wave, rate, _ = next(iter(utterances(data_dir)))  # warm-up, untimed
    with torch.no_grad():
        if streaming:
            decoder(wave, is_final=True)
        else:
            decoder(wave)
    counter = getattr(decoder.asr_model.encoder, "counter", None)
    if counter is not None:  # count the test set only
        counter.counts.clear()
    for key, wave, rate, _ in utterances(data_dir):
        pieces = pieces_of(wave, rate, chunk_ms)
        start = time.perf_counter()
        with torch.no_grad():
            if streaming:
                for piece in pieces[:-1]:
                    decoder(piece, is_final=False)
                last = time.perf_counter()
                result = decoder(pieces[-1], is_final=True)
            else:
                last = start
                result = decoder(wave)
        end = time.perf_counter()
        hyps[key] = result[0][0] if result else ""
        compute, audio = compute + end - start, audio + wave.numel() / rate
        finals.append(end - last)
    return hyps, {"rtf": compute / audio, "final_latency_mean_s": sum(finals) / len(finals),
                  "final_latency_max_s": max(finals), "audio_s": audio}


def encoder_pass(asr_model, data_dir, chunk_ms, features=None):
    """The encoder alone over the test set (whole utterances, or chunk by chunk through
    the streaming front end), with the energy report's firing-rate hooks; returns the
    recorder, (input, output) frames and seconds per utterance, the encoder frames, and
    the delay of each encoder frame from its newest input sample to its emission."""
    import torch

    from espnet_imlspike.energy.hooks import FiringRateRecorder

    encoder = asr_model.encoder
    recorder = FiringRateRecorder(encoder)
    lengths, seconds, outputs, delays = [], [], {}, []
    with recorder, torch.no_grad():
        for key, wave, rate, _ in utterances(data_dir):
            if chunk_ms is None:
                out, _ = asr_model.encode(wave[None], torch.tensor([wave.numel()]))
            else:
                step, parts, feats_state, enc_state = int(rate * chunk_ms / 1000), [], None, None
                pieces = pieces_of(wave, rate, chunk_ms)
                for index, piece in enumerate(pieces):
                    final = index == len(pieces) - 1
                    feats, feats_state = features(piece, feats_state, final)
                    if feats is None:
                        continue
                    frames, _, enc_state = encoder(feats, torch.tensor([feats.size(1)]),
                                                   enc_state, is_final=final, infer_mode=True)
                    arrived = min((index + 1) * step, wave.numel()) / rate
                    done = sum(p.size(1) for p in parts)
                    for frame in range(done, done + frames.size(1)):  # conv2d, 10 ms hop
                        newest = min(((4 * frame + 6) * 160 + 256) / rate, wave.numel() / rate)
                        delays.append(arrived - newest)
                    parts.append(frames)
                out = torch.cat(parts, dim=1)
            outputs[key] = out
            lengths.append((wave.numel() // 160 + 1, out.size(1)))
            seconds.append(wave.numel() / rate)
    return recorder, lengths, seconds, outputs, delays


def energy(encoder, recorder, lengths, seconds, name):
    """Eq. 16-17 of the recorded firing rates (encoder blocks only, the energy report's
    headline), per utterance and per second of audio, spiking model and ANN twin."""
    from espnet_imlspike.energy.build import build_report

    report, _ = build_report(encoder, recorder, lengths, 0, model_name=name, seconds=seconds)
    ann, snn = report["models"]
    per_second = len(lengths) / sum(seconds)
    return {"snn_mj_per_utt": snn["energy_mj"], "ann_mj_per_utt": ann["energy_mj"],
            "snn_uj_per_s": 1e3 * snn["energy_mj"] * per_second,
            "ann_uj_per_s": 1e3 * ann["energy_mj"] * per_second,
            "saving": ann["energy_mj"] / snn["energy_mj"],
            "snn_with_front_uj_per_s": 1e3 * snn["energy_with_front_mj"] * per_second,
            "ann_with_front_uj_per_s": 1e3 * ann["energy_with_front_mj"] * per_second}


def measure(args) -> None:
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_imlspike.streaming.speech2text import Speech2TextStreaming

    torch.set_num_threads(args.threads)
    data = args.out_dir / "data" / "test"
    exps = {"full": args.out_dir / "exp" / "full", "causal": args.out_dir / "exp" / "streaming"}
    files = {mode: (exp / "config.yaml", exp / "valid.acc.best.pth") for mode, exp in exps.items()}
    result = {"threads": args.threads, "cpu_count": os.cpu_count(),
              "load_before": os.getloadavg(), "beam_size": args.beam_size, "rows": []}

    def row(**entry):
        result["rows"].append(entry)
        print(json.dumps(entry), flush=True)

    # 1. whole utterances, ESPnet's stock Speech2Text
    for mode in ("full", "causal"):
        for ctc_weight in (0.3, 1.0):
            s2t = Speech2Text(*files[mode], beam_size=args.beam_size, ctc_weight=ctc_weight)
            hyps, timing = timed_decode(s2t, data, None, streaming=False)
            row(mode=mode, decoder=f"stock Speech2Text, ctc_weight {ctc_weight}", chunk_ms=None,
                **error_rates(hyps, data), **timing)
    # 2. chunk by chunk (streaming model), both searches
    searches = [("block", 16), ("ctc", None)]
    for chunk_ms in args.chunks_ms:
        for search, block in searches + ([("block", 4)] if chunk_ms == 320 else []):
            s2t = Speech2TextStreaming(*files["causal"], beam_size=args.beam_size,
                                       ctc_weight=0.3, search=search, block_frames=block or 16)
            hyps, timing = timed_decode(s2t, data, chunk_ms, streaming=True)
            name = ("block search, ctc_weight 0.3, block_frames "
                    f"{block}" if search == "block" else "frame-synchronous CTC prefix search")
            row(mode="chunked", decoder=name, chunk_ms=chunk_ms,
                algorithmic_latency_s=chunk_ms / 1000 + 0.040, **error_rates(hyps, data),
                **timing)
    s2t = Speech2TextStreaming(*files["causal"], beam_size=args.beam_size, search="ctc")
    hyps, timing = timed_decode(s2t, data, None, streaming=True)
    row(mode="causal", decoder="frame-synchronous CTC prefix search (one chunk)",
        chunk_ms=None, **error_rates(hyps, data), **timing)
    # 3. the deploy form, chunk by chunk (binary spike trains, accumulates counted)
    s2t = Speech2TextStreaming(*files["causal"], beam_size=args.beam_size, search="ctc",
                               deploy=True, execution="spike_train")
    s2t.asr_model.encoder.counter.enabled = True
    hyps, timing = timed_decode(s2t, data, args.deploy_chunk_ms, streaming=True)
    counts = s2t.asr_model.encoder.counter.counts
    ac = sum(v.get("ac", 0) for k, v in counts.items() if not k.startswith("embed"))
    from espnet_imlspike.energy.ops import conv_front_costs

    encoder = s2t.asr_model.encoder
    whole_front = sum(c.flops for _, wave, _, _ in utterances(data)
                      for c in conv_front_costs(encoder.embed, wave.numel() // 160 + 1,
                                                encoder.input_size))
    row(mode="chunked, deploy form (spike trains)", decoder="frame-synchronous CTC prefix search",
        chunk_ms=args.deploy_chunk_ms, **error_rates(hyps, data), **timing,
        counted_block_ac_per_s=ac / timing["audio_s"],
        counted_block_ac_energy_uj_per_s=ac * 0.9e-6 / timing["audio_s"],
        counted_front_mac_per_s=counts["embed"]["mac"] / timing["audio_s"],
        whole_utterance_front_mac_per_s=whole_front / timing["audio_s"])
    # 4. encoder passes: energy per mode, chunked frames and spikes against causal
    result["energy"], causal = {}, None
    for mode, chunk_ms in [("full", None), ("causal", None)] + [
            ("chunked", c) for c in args.chunks_ms]:
        model = Speech2TextStreaming(*files["causal"], search="ctc") if mode == "chunked" else None
        asr_model = model.asr_model if model else Speech2Text(*files[mode]).asr_model
        recorder, lengths, seconds, outputs, delays = encoder_pass(
            asr_model, data, chunk_ms, model.features if model else None)
        entry = energy(asr_model.encoder, recorder, lengths, seconds, mode)
        spikes = {name: layer.spikes for name, layer in recorder.layers.items()}
        if mode == "causal":
            causal = (outputs, spikes)
        if mode == "chunked":
            entry.update(
                spikes_equal_causal=spikes == causal[1],
                encoder_max_abs_diff_vs_causal=max(
                    (outputs[k] - causal[0][k]).abs().max().item() for k in outputs),
                frame_delay_mean_s=sum(delays) / len(delays), frame_delay_max_s=max(delays))
        result["energy"][mode if chunk_ms is None else f"chunked_{chunk_ms}ms"] = entry
        print(mode, chunk_ms, json.dumps(entry), flush=True)
    result["load_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.output}.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "measure"))
    parser.add_argument("--out_dir", type=Path, default=Path("/tmp/streaming_bench"))
    parser.add_argument("--output", type=Path,
                        default=REPO / "bench/results/streaming_latency_cpu")
    parser.add_argument("--chunks_ms", type=int, nargs="+", default=[160, 320, 640, 1000])
    parser.add_argument("--deploy_chunk_ms", type=int, default=320)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beam_size", type=int, default=4)
    args = parser.parse_args()
    train(args) if args.step == "train" else measure(args)


if __name__ == "__main__":
    main()
