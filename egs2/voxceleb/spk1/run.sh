#!/usr/bin/env bash
# VoxCeleb speaker verification with IML-Spikeformer (MFA protocol) through ESPnet's stock
# spk.sh, then the energy report.
#
#   ESPNET_ROOT=~/espnet ./run.sh                                  # IML-Spikeformer, T=8
#   ESPNET_ROOT=~/espnet ./run.sh --spk_config conf/tuning/train_mfa_transformer.yaml
#   ESPNET_ROOT=~/espnet ./run.sh --train_set voxceleb1_dev        # Table IV's VoxCeleb1 rows
#   ESPNET_ROOT=~/espnet ./run.sh --skip_packing false             # + stage 9: the model zip
#
# Runs the unmodified egs2/voxceleb/spk1/spk.sh of your ESPnet checkout with the defaults below
# and the config switched; between the metrics (stage 8) and packing (stage 9) the energy
# report of spiking models on the test set's audio: exp/spk_<config>[_sp]/energy/, appended to
# RESULTS.md, plots in images/. Every spk.sh option passes on and overrides these defaults
# (--train_set, --valid_set, --test_sets, --cohort_set, --ngpu, --python, --stage, ...);
# overlay options: --skip_energy true, --energy_set NAME, --energy_opts "...".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../_common/overlay.sh
. "$here/../../_common/overlay.sh"

run_spk_overlay voxceleb/spk1 \
    --feats_type raw \
    --spk_config "$here/conf/tuning/train_mfa_iml_spikeformer_t8.yaml" \
    --train_set voxceleb2_dev \
    --valid_set voxceleb1_test \
    --cohort_set voxceleb2_test \
    --test_sets voxceleb1_test \
    --inference_model valid.eer.best.pth \
    --speed_perturb_factors "0.9 1.0 1.1" \
    "$@"
