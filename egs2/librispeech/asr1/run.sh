#!/usr/bin/env bash
# LibriSpeech-960 with IML-Spikeformer (99.36M) through ESPnet's stock asr.sh, then the
# energy report.
#
#   ESPNET_ROOT=~/espnet ./run.sh                                  # IML-Spikeformer, T=6
#   ESPNET_ROOT=~/espnet ./run.sh --asr_config conf/tuning/train_asr_transformer_e18.yaml
#
# Runs the unmodified egs2/librispeech/asr1/asr.sh of your ESPnet checkout (5000 BPE, no
# LM as in the paper) with --asr_config switched, then writes exp/asr_<config>/energy/
# (on test_clean) for spiking models.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../_common/overlay.sh
. "$here/../../_common/overlay.sh"

asr_config=$here/conf/tuning/train_asr_iml_spikeformer_e18.yaml
inference_config=conf/decode_asr.yaml
audio_format=flac.ark
inference_model=valid.acc.ave.pth
skip_energy=false
python=${python:-python3}
parse_asr_args "$@"
recipe=$(espnet_recipe librispeech/asr1 asr.sh)
tag=$(basename "$asr_config" .yaml)
cd "$recipe"
./asr.sh \
    --lang en \
    --ngpu 4 \
    --nbpe 5000 \
    --max_wav_duration 30 \
    --audio_format "$audio_format" \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --use_lm false \
    --asr_config "$asr_config" \
    --asr_tag "$tag" \
    --inference_config "$inference_config" \
    --inference_asr_model "$inference_model" \
    --train_set train_960 \
    --valid_set dev \
    --test_sets "test_clean test_other dev_clean dev_other" \
    --bpe_train_text "data/train_960/text" \
    "${args[@]}"
if [ "$skip_energy" != true ]; then
  energy_stage asr "exp/asr_$tag" "$inference_model" dump/raw/test_clean "$audio_format"
fi
