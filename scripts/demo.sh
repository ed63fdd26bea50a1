#!/usr/bin/env bash
# The main job on the embedded demo data: the offline spoken-digits recipe at its CPU
# size. Generates speech with espeak-ng, trains IML-Spikeformer and the stock ESPnet
# Transformer with ESPnet's own asr_train, decodes with asr_inference, scores CER/WER,
# writes the energy report and prints one comparison table (demo_out/results.md).
# Extra arguments go to the recipe (e.g. --with_sdt true, --size ci).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=.venv/bin/python exec bash egs2/espeak_digits/asr1/run.sh --out_dir demo_out "$@"
