#!/usr/bin/env bash
# AISHELL-1 with IML-Spikeformer through ESPnet's stock asr.sh, then the energy report.
#
#   ESPNET_ROOT=~/espnet ./run.sh                                   # IML-Spikeformer 30.35M, T=6
#   ESPNET_ROOT=~/espnet ./run.sh --asr_config conf/tuning/train_asr_transformer_30.35m.yaml
#   ESPNET_ROOT=~/espnet ./run.sh --stage 12                        # any asr.sh option passes on
#
# Runs the unmodified egs2/aishell/asr1/asr.sh of your ESPnet checkout (data preparation,
# features, tokens, training, decoding, scoring) with --asr_config switched and no LM (as
# the paper), then writes exp/asr_<config>/energy/ for spiking models. Configs are those
# of conf/tuning/ (paper sizes, baselines, Table V ablations).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../_common/overlay.sh
. "$here/../../_common/overlay.sh"

asr_config=$here/conf/tuning/train_asr_iml_spikeformer.yaml
inference_config=conf/decode_asr_transformer.yaml
audio_format=flac.ark
inference_model=valid.acc.ave.pth
skip_energy=false
python=${python:-python3}
parse_asr_args "$@"
recipe=$(espnet_recipe aishell/asr1 asr.sh)
tag=$(basename "$asr_config" .yaml)
cd "$recipe"
./asr.sh \
    --lang zh \
    --ngpu 4 \
    --audio_format "$audio_format" \
    --feats_type raw \
    --token_type char \
    --use_lm false \
    --asr_config "$asr_config" \
    --asr_tag "$tag" \
    --inference_config "$inference_config" \
    --inference_asr_model "$inference_model" \
    --train_set train \
    --valid_set dev \
    --test_sets "dev test" \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --asr_speech_fold_length 512 \
    --asr_text_fold_length 150 \
    --lm_train_text data/train/text \
    "${args[@]}"
if [ "$skip_energy" != true ]; then
  energy_stage asr "exp/asr_$tag" "$inference_model" dump/raw/test "$audio_format"
fi
