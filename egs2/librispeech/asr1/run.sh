#!/usr/bin/env bash
# LibriSpeech-960 with IML-Spikeformer (99.36M) through ESPnet's stock asr.sh, then the
# energy report.
#
#   ESPNET_ROOT=~/espnet ./run.sh                                  # IML-Spikeformer, T=6
#   ESPNET_ROOT=~/espnet ./run.sh --asr_config conf/tuning/train_asr_transformer_e18.yaml
#   ESPNET_ROOT=~/espnet ./run.sh --nbpe 1000 --ngpu 1             # any asr.sh option
#
# Runs the unmodified egs2/librispeech/asr1/asr.sh of your ESPnet checkout (5000 BPE, no LM as
# in the paper) with the defaults below and the config switched; between scoring (stage 13)
# and packing (stage 14) the energy report of spiking models on test_clean (else the first
# test set): exp/asr_<config>/energy/, appended to RESULTS.md, plots in images/. Every asr.sh
# option passes on and overrides these defaults; overlay options as in ../../aishell/asr1/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../_common/overlay.sh
. "$here/../../_common/overlay.sh"

train_set=$(opt_value train_set train_960 "$@")
run_asr_overlay librispeech/asr1 \
    --lang en \
    --ngpu 4 \
    --nbpe 5000 \
    --max_wav_duration 30 \
    --audio_format flac.ark \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --use_lm false \
    --asr_config "$here/conf/tuning/train_asr_iml_spikeformer_e18.yaml" \
    --inference_config conf/decode_asr.yaml \
    --inference_asr_model valid.acc.ave.pth \
    --train_set train_960 \
    --valid_set dev \
    --test_sets "test_clean test_other dev_clean dev_other" \
    --energy_set test_clean \
    --bpe_train_text "data/$train_set/text" \
    "$@"
