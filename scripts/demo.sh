#!/usr/bin/env bash
# The main job on the embedded demo data: generate a small tone-language corpus,
# train tiny IML-Spikeformer, stock Transformer and Spike-driven Transformer ASR
# models with ESPnet's stock asr_train, decode with asr_inference, print CERs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
conf=egs2/tone_demo/asr1/conf
exec .venv/bin/python -m espnet_imlspike.demo.asr_pipeline --out_dir demo_out \
  --config "$conf/train_asr_iml_spikeformer_tiny.yaml" \
           "$conf/train_asr_transformer_tiny.yaml" \
           "$conf/train_asr_spike_driven_transformer_tiny.yaml" "$@"
