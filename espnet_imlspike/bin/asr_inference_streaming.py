"""Chunk-by-chunk decoding of a streaming IML-Spikeformer (ESPnet's streaming CLI).

Example::

    python -m espnet_imlspike.bin.asr_inference_streaming \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.best.pth \\
        --data_path_and_name_and_type data/test/wav.scp,speech,sound \\
        --sim_chunk_length 2560 --beam_size 4 --output_dir exp/asr/decode_chunk160ms

Takes the arguments of ESPnet's ``espnet2.bin.asr_inference_streaming`` (whose
``Speech2TextStreaming`` asserts contextual-block encoders) and decodes with
:class:`espnet_imlspike.streaming.speech2text.Speech2TextStreaming`: each utterance is
fed in pieces of ``--sim_chunk_length`` samples (0: the whole utterance as one piece),
the last with ``is_final``. Writes ESPnet's ``1best_recog/{text,token,token_int,score}``
and ``streaming_stats.json``: audio seconds, compute seconds (front end, encoder and
beam search, timed per chunk), real-time factor, and the time from the last piece to
the final hypothesis (mean and maximum).
"""

import json
import logging
import time
from pathlib import Path
from typing import List, Optional

from espnet_imlspike.bin.cli import OutputDir, add_bool, run
from espnet_imlspike.errors import OptionError

OUTPUTS = ("streaming_stats.json",)


def get_parser():
    from espnet2.bin.asr_inference_streaming import get_parser as espnet_parser

    parser = espnet_parser()
    parser.prog = "asr_inference_streaming"
    parser.description = __doc__
    group = parser.add_argument_group("Streaming IML-Spikeformer")
    group.add_argument("--search", choices=("block", "ctc"), default="block",
                       help="block: ESPnet's block-synchronous joint CTC/attention search; "
                            "ctc: frame-synchronous CTC prefix beam search (independent of "
                            "the chunking, partial result after every chunk)")
    group.add_argument("--block_frames", type=int, default=16,
                       help="encoder frames per block of the block search")
    add_bool(group, "--deploy", False, "run the encoder in its spike-driven deploy form")
    group.add_argument("--execution", choices=("multi_level", "spike_train"),
                       default="multi_level", help="the deploy form's execution")
    group.add_argument("--fs", type=int, default=16000,
                       help="sampling rate, for the audio seconds of the statistics")
    add_bool(group, "--allow_uncalibrated", False,
             "decode even if IMLS threshold statistics were never trained")
    add_bool(group, "--overwrite", False, "replace an earlier run's streaming_stats.json")
    return parser


def decode(args, output: OutputDir) -> dict:
    import torch
    from espnet2.fileio.datadir_writer import DatadirWriter
    from espnet2.tasks.asr import ASRTask
    from espnet2.torch_utils.set_all_random_seed import set_all_random_seed
    from espnet.nets.beam_search import Hypothesis
    from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError

    from espnet_imlspike.streaming.speech2text import Speech2TextStreaming

    set_all_random_seed(args.seed)
    s2t = Speech2TextStreaming(
        asr_train_config=args.asr_train_config, asr_model_file=args.asr_model_file,
        lm_train_config=args.lm_train_config, lm_file=args.lm_file,
        token_type=args.token_type, bpemodel=args.bpemodel,
        device="cuda" if args.ngpu >= 1 else "cpu", maxlenratio=args.maxlenratio,
        minlenratio=args.minlenratio, dtype=args.dtype, beam_size=args.beam_size,
        ctc_weight=args.ctc_weight, lm_weight=args.lm_weight, penalty=args.penalty,
        nbest=args.nbest, normalize_length=args.normalize_length,
        disable_repetition_detection=args.disable_repetition_detection,
        decoder_text_length_limit=args.decoder_text_length_limit,
        encoded_feat_length_limit=args.encoded_feat_length_limit,
        search=args.search, block_frames=args.block_frames, deploy=args.deploy,
        execution=args.execution,
        allow_uncalibrated=args.allow_uncalibrated,
    )
    loader = ASRTask.build_streaming_iterator(
        args.data_path_and_name_and_type, dtype=args.dtype, batch_size=1,
        key_file=args.key_file, num_workers=args.num_workers,
        preprocess_fn=ASRTask.build_preprocess_fn(s2t.asr_train_args, False),
        collate_fn=ASRTask.build_collate_fn(s2t.asr_train_args, False),
        allow_variable_data_keys=args.allow_variable_data_keys, inference=True,
    )
    output.prepare()
    stats = {"utterances": 0, "audio_s": 0.0, "compute_s": 0.0, "final_s": []}
    with DatadirWriter(args.output_dir) as writer, torch.no_grad():
        for keys, batch in loader:
            speech = batch["speech"][0]
            step = args.sim_chunk_length or speech.numel()
            pieces = [speech[i:i + step] for i in range(0, speech.numel(), step)] or [speech]
            start = time.perf_counter()
            try:
                for piece in pieces[:-1]:
                    s2t(piece, is_final=False)
                last = time.perf_counter()
                results = s2t(pieces[-1], is_final=True)
            except TooShortUttError:  # as ESPnet's streaming inference writes it
                s2t.reset()
                last = time.perf_counter()
                hyp = Hypothesis(score=0.0, scores={}, states={}, yseq=[])
                results = [[" ", ["<space>"], [2], hyp]] * args.nbest
            end = time.perf_counter()
            stats["utterances"] += 1
            stats["audio_s"] += speech.numel() / args.fs
            stats["compute_s"] += end - start
            stats["final_s"].append(end - last)
            for n, (text, token, token_int, hyp) in enumerate(results[:args.nbest], 1):
                best = writer[f"{n}best_recog"]
                best["token"][keys[0]] = " ".join(token)
                best["token_int"][keys[0]] = " ".join(map(str, token_int))
                best["score"][keys[0]] = str(float(hyp.score))
                if text is not None:
                    best["text"][keys[0]] = text
    finals = stats.pop("final_s")
    stats.update(
        sim_chunk_length=args.sim_chunk_length, search=args.search,
        block_frames=args.block_frames,
        deploy=args.deploy, rtf=stats["compute_s"] / max(stats["audio_s"], 1e-9),
        final_latency_mean_s=sum(finals) / max(1, len(finals)),
        final_latency_max_s=max(finals, default=0.0), threads=torch.get_num_threads(),
    )
    (Path(args.output_dir) / "streaming_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def main(cmd: Optional[List[str]] = None) -> None:
    parser = get_parser()

    def body(args):
        if args.batch_size != 1:
            raise OptionError("--batch_size must be 1 for streaming")
        if args.sim_chunk_length < 0:
            raise OptionError(f"--sim_chunk_length must be >= 0, got {args.sim_chunk_length}")
        if args.word_lm_train_config is not None:
            raise OptionError("--word_lm_train_config is not supported (as in ESPnet)")
        logging.basicConfig(
            level=args.log_level,
            format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
        )
        output = OutputDir(Path(args.output_dir), OUTPUTS, args.overwrite).check()
        stats = decode(args, output)
        print(json.dumps(stats, indent=2))

    run(parser, body, cmd)


if __name__ == "__main__":
    main()
