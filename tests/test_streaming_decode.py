"""Chunk-by-chunk decoding through the Speech2TextStreaming-compatible wrapper and the
CLI; why ESPnet's own streaming entry point cannot take the encoder; and (slow) the YAML
switch trained by the stock asr_train, decoded by the stock asr_inference and by the
streaming CLI."""

import json

import numpy as np
import pytest
import torch
import yaml

from helpers import TONE_CONF, run_python

CONFIG = TONE_CONF / "train_asr_iml_spikeformer_streaming_tiny.yaml"


def registered_asr_task():
    import espnet2.tasks.asr as task

    from espnet_imlspike.registration import register_asr

    register_asr(task)
    return task


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """config.yaml + model.pth of the tiny streaming model, IMLS statistics calibrated
    on random audio (no training: decoding checks plumbing, not accuracy)."""
    out = tmp_path_factory.mktemp("streaming_model")
    tokens = out / "tokens.txt"
    tokens.write_text("\n".join(["<blank>", "<unk>", *"abcdef", "<sos/eos>"]) + "\n")
    x = np.random.default_rng(0).normal(size=(500, 80))
    np.savez(out / "stats.npz", count=np.array(500), sum=x.sum(0), sum_square=(x ** 2).sum(0))
    task = registered_asr_task().ASRTask
    args = task.get_parser().parse_args([
        "--config", str(CONFIG), "--token_list", str(tokens), "--token_type", "char",
        "--normalize", "global_mvn", "--normalize_conf", f"stats_file={out}/stats.npz",
        "--output_dir", str(out),
    ])
    model = task.build_model(args)
    torch.manual_seed(0)
    model.train()
    for _ in range(2):
        model.encode(torch.randn(2, 12000) * 0.1, torch.tensor([12000, 9000]))
    (out / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.save(model.state_dict(), out / "model.pth")
    return out


def test_the_wrapper_streams_the_full_utterance_encoding(untrained):
    from espnet_imlspike.streaming.speech2text import Speech2TextStreaming

    s2t = Speech2TextStreaming(untrained / "config.yaml", untrained / "model.pth",
                               beam_size=2, ctc_weight=1.0, maxlenratio=0.3)
    wave = torch.randn(9600, generator=torch.Generator().manual_seed(1)) * 0.1  # 0.6 s
    with torch.no_grad():
        full, _ = s2t.asr_model.encode(wave[None], torch.tensor([wave.numel()]))
    frames = []
    hook = s2t.asr_model.encoder.register_forward_hook(lambda m, i, o: frames.append(o[0]))
    for start in range(0, 6400, 2560):  # 160 ms chunks, then the rest
        s2t(wave[start:start + 2560], is_final=False)  # partial n-best, maybe empty
    results = s2t(wave[7680:], is_final=True)
    hook.remove()
    torch.testing.assert_close(torch.cat(frames, dim=1), full, atol=2e-5, rtol=0)
    text, tokens, token_ids, hyp = results[0]
    assert len(tokens) == len(token_ids) and hyp.yseq[0] == s2t.asr_model.sos
    assert s2t.encoder_states is None and s2t.frontend_states is None  # reset after final


def test_ctc_search_gives_partial_results_and_the_same_final_for_any_chunking(untrained):
    from espnet_imlspike.streaming.speech2text import Speech2TextStreaming

    s2t = Speech2TextStreaming(untrained / "config.yaml", untrained / "model.pth",
                               beam_size=3, search="ctc")
    wave = torch.randn(12000, generator=torch.Generator().manual_seed(2)) * 0.1
    finals = []
    for chunk in (1600, 4000, 12000):
        pieces = list(torch.split(wave, chunk))
        for piece in pieces[:-1]:
            partial = s2t(piece, is_final=False)
            assert len(partial) >= 1  # the n-best so far, after every chunk
        finals.append([(h[2], float(h[3].score)) for h in s2t(pieces[-1], is_final=True)])
    # encoder frames equal up to float rounding, so the scores up to rounding too
    for other in finals[1:]:
        assert [ids for ids, _ in other] == [ids for ids, _ in finals[0]]
        assert all(abs(a - b) < 1e-3 for (_, a), (_, b) in zip(other, finals[0]))


def test_a_full_attention_model_is_refused_by_name(untrained, tmp_path):
    import shutil

    from espnet_imlspike.errors import InputError
    from espnet_imlspike.streaming.speech2text import Speech2TextStreaming

    config = yaml.safe_load((untrained / "config.yaml").read_text())
    config["encoder"] = "iml_spikeformer"  # same parameters, full attention
    config["encoder_conf"].pop("left_context")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(untrained / "model.pth", tmp_path / "model.pth")
    with pytest.raises(InputError, match="iml_spikeformer_streaming"):
        Speech2TextStreaming(tmp_path / "config.yaml", tmp_path / "model.pth")


def test_espnet_streaming_entry_point_rejects_the_encoder(untrained):
    """The reason for the wrapper: ESPnet asserts contextual-block encoders."""
    registered_asr_task()
    from espnet2.bin.asr_inference_streaming import Speech2TextStreaming

    with pytest.raises(AssertionError):
        Speech2TextStreaming(untrained / "config.yaml", untrained / "model.pth")


def test_the_cli_decodes_chunk_by_chunk(untrained, tmp_path):
    from tone_corpus import make_corpus

    from espnet_imlspike.bin.asr_inference_streaming import main

    registered_asr_task()
    test = make_corpus(tmp_path, {"test": 2})["test"]
    out = tmp_path / "decode"
    args = ["--asr_train_config", str(untrained / "config.yaml"),
            "--asr_model_file", str(untrained / "model.pth"),
            "--data_path_and_name_and_type", f"{test}/wav.scp,speech,sound",
            "--sim_chunk_length", "5120", "--beam_size", "2", "--ctc_weight", "1.0",
            # a short length limit ends every hypothesis before the last block: ESPnet's
            # online search would then index an empty beam (OnlineBeamSearch handles it)
            "--maxlenratio", "0.3", "--deploy", "true", "--output_dir", str(out)]
    main(args)
    keys = [line.split()[0] for line in (test / "wav.scp").read_text().splitlines()]
    decoded = (out / "1best_recog" / "token").read_text().splitlines()
    assert sorted(line.split()[0] for line in decoded) == sorted(keys)
    stats = json.loads((out / "streaming_stats.json").read_text())
    assert stats["utterances"] == 2 and stats["rtf"] > 0 and stats["deploy"] is True
    with pytest.raises(SystemExit) as refused:  # a second run must not mix its outputs
        main(args)
    assert refused.value.code == 2


@pytest.mark.slow
def test_yaml_switch_trains_with_stock_asr_train_and_decodes_streaming(tmp_path):
    from asr_pipeline import train_and_decode
    from tone_corpus import make_corpus

    dirs = make_corpus(tmp_path, {"train": 40, "valid": 8, "test": 4})
    result = train_and_decode(tmp_path, CONFIG, dirs, ["--max_epoch", "1"], tag="stream")
    exp = result["exp_dir"]
    assert yaml.safe_load((exp / "config.yaml").read_text())["encoder"] == (
        "iml_spikeformer_streaming")
    done = run_python([
        "-m", "espnet_imlspike.bin.asr_inference_streaming",
        "--asr_train_config", str(exp / "config.yaml"),
        "--asr_model_file", str(exp / "valid.acc.best.pth"),
        "--data_path_and_name_and_type", f"{dirs['test']}/wav.scp,speech,sound",
        "--sim_chunk_length", "2560", "--beam_size", "4", "--ctc_weight", "0.3",
        "--output_dir", str(tmp_path / "stream_decode"),
    ])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (tmp_path / "stream_decode" / "1best_recog" / "token").read_text().splitlines()
    assert len(lines) == 4
