#!/usr/bin/env bash
# VoxCeleb speaker verification with IML-Spikeformer (MFA protocol) through ESPnet's stock
# spk.sh, then the energy report.
#
#   ESPNET_ROOT=~/espnet ./run.sh                                  # IML-Spikeformer, T=8
#   ESPNET_ROOT=~/espnet ./run.sh --spk_config conf/tuning/train_mfa_transformer.yaml
#   ESPNET_ROOT=~/espnet ./run.sh --train_set voxceleb1_dev        # Table IV's VoxCeleb1 rows
#
# Runs the unmodified egs2/voxceleb/spk1/spk.sh of your ESPnet checkout with --spk_config
# switched, then writes exp/spk_<config>/energy/ (on the test set) for spiking models.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../_common/overlay.sh
. "$here/../../_common/overlay.sh"

spk_config=$here/conf/tuning/train_mfa_iml_spikeformer_t8.yaml
train_set=voxceleb2_dev
valid_set=voxceleb1_test
test_sets=voxceleb1_test
inference_model=valid.eer.best.pth
speed_perturb_factors="0.9 1.0 1.1"  # spk.sh's default; its exp dir then ends in _sp
skip_energy=false
python=${python:-python3}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --spk_config) spk_config=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    --train_set) train_set=$2; shift 2 ;;
    --inference_model) inference_model=$2; shift 2 ;;
    --speed_perturb_factors) speed_perturb_factors=$2; shift 2 ;;
    --skip_energy) skip_energy=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ -f "$spk_config" ] || { echo "error: --spk_config $spk_config: no such file" >&2; exit 1; }
recipe=$(espnet_recipe voxceleb/spk1 spk.sh)
tag=$(basename "$spk_config" .yaml)
cd "$recipe"
./spk.sh \
    --feats_type raw \
    --spk_config "$spk_config" \
    --spk_tag "$tag" \
    --train_set "$train_set" \
    --valid_set "$valid_set" \
    --test_sets "$test_sets" \
    --inference_model "$inference_model" \
    --speed_perturb_factors "$speed_perturb_factors" \
    "${args[@]}"
exp=exp/spk_$tag
[ -n "$speed_perturb_factors" ] && exp=${exp}_sp
if [ "$skip_energy" != true ]; then
  # the original test audio (spk.sh formats only the trial lists of test sets)
  energy_stage spk "$exp" "$inference_model" "data/$test_sets" wav
fi
