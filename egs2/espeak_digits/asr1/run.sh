#!/usr/bin/env bash
# Offline spoken-digits recipe: synthetic speech from espeak-ng (8 voices), Kaldi-style
# data dirs, sentencepiece tokens, then for each model ESPnet's stock asr_train
# (collect stats, train), asr_inference, CER/WER scoring and, for spiking models, the
# energy report; one comparison table at the end (results.md).
#
#   ./run.sh                      # --size demo: 2-core CPU, IML-Spikeformer vs Transformer
#   ./run.sh --size ci            # reduced: plumbing only (tiny data, 1 epoch)
#   ./run.sh --size gpu           # paper-size encoders (12x256), 20k utterances, 1 GPU
#   ./run.sh --with_sdt true      # also the Spike-driven Transformer baseline
#   ./run.sh --out_dir DIR        # where everything goes (default: exp_<size>)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
size=demo
with_sdt=false
out_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --with_sdt) with_sdt=$2; shift 2 ;;
    --out_dir) out_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$size" in
  ci)   counts="--num_train 120 --num_valid 16 --num_test 16 --max_epoch 1"; conf=demo; ngpu=0 ;;
  demo) counts="--num_train 1000 --num_valid 50 --num_test 100"; conf=demo; ngpu=0 ;;
  gpu)  counts="--num_train 20000 --num_valid 500 --num_test 1000"; conf=gpu; ngpu=1 ;;
  *) echo "run.sh: --size must be ci, demo or gpu, got '$size'" >&2; exit 2 ;;
esac
configs=("$here/conf/train_asr_iml_spikeformer_${conf}.yaml" "$here/conf/train_asr_transformer_${conf}.yaml")
if [ "$with_sdt" = true ]; then
  configs+=("$here/conf/train_asr_spike_driven_transformer_${conf}.yaml")
fi
python=${PYTHON:-python3}
# shellcheck disable=SC2086
exec "$python" "$here/../../_common/pyscripts/asr_pipeline.py" --corpus speech \
  --out_dir "${out_dir:-$here/exp_${size}}" --ngpu "$ngpu" $counts --config "${configs[@]}"
