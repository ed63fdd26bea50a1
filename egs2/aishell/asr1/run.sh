#!/usr/bin/env bash
# AISHELL-1 with IML-Spikeformer through ESPnet's stock asr.sh, then the energy report.
#
#   ESPNET_ROOT=~/espnet ./run.sh                                   # IML-Spikeformer 30.35M, T=6
#   ESPNET_ROOT=~/espnet ./run.sh --asr_config conf/tuning/train_asr_transformer_30.35m.yaml
#   ESPNET_ROOT=~/espnet ./run.sh --stage 12 --ngpu 1 --python python3.11   # asr.sh options
#   ESPNET_ROOT=~/espnet ./run.sh --skip_packing false              # + stage 14: the model zip
#
# Runs the unmodified egs2/aishell/asr1/asr.sh of your ESPnet checkout (data preparation,
# features, tokens, training, decoding, scoring) with the defaults below (those of ESPnet's
# aishell run.sh, no LM as in the paper, the config switched), then, between scoring (stage 13)
# and packing (stage 14), the energy report of spiking models: exp/asr_<config>/energy/, its
# tables appended to exp/asr_<config>/RESULTS.md, its plots in exp/asr_<config>/images/.
# Every asr.sh option passes on and overrides these defaults (--train_set, --valid_set,
# --test_sets, --lang, --token_type, --nbpe, --ngpu, --python, --stage, --stop_stage, ...).
# Overlay options: --skip_energy true, --energy_set NAME (default: test, else the first test
# set), --energy_opts "OPTIONS of espnet_imlspike.bin.energy_report".
# Note: ESPnet's aishell local/path.sh (sourced by path.sh) stops with an error unless
# tools/kenlm is built (cd $ESPNET_ROOT/tools && make kenlm.done), even without an LM.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../_common/overlay.sh
. "$here/../../_common/overlay.sh"

train_set=$(opt_value train_set train "$@")
run_asr_overlay aishell/asr1 \
    --lang zh \
    --ngpu 4 \
    --audio_format flac.ark \
    --feats_type raw \
    --token_type char \
    --use_lm false \
    --asr_config "$here/conf/tuning/train_asr_iml_spikeformer.yaml" \
    --inference_config conf/decode_asr_transformer.yaml \
    --inference_asr_model valid.acc.ave.pth \
    --train_set train \
    --valid_set dev \
    --test_sets "dev test" \
    --energy_set test \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --asr_speech_fold_length 512 \
    --asr_text_fold_length 150 \
    --lm_train_text "data/$train_set/text" \
    "$@"
