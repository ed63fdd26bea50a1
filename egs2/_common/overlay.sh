# Shared by the recipe overlays (egs2/<corpus>/<task>/run.sh): find the user's ESPnet
# recipe, run its stock template script, then the energy-report stage. Sourced, not run.

# espnet_recipe CORPUS/TASK TEMPLATE: print the recipe dir of $ESPNET_ROOT, or fail clearly.
espnet_recipe() {
  local recipe_path=$1 template=$2
  if [ -z "${ESPNET_ROOT:-}" ]; then
    echo "error: set ESPNET_ROOT to your ESPnet checkout (the directory holding egs2/)," \
         "e.g. ESPNET_ROOT=~/espnet ./run.sh" >&2
    return 1
  fi
  local recipe="$ESPNET_ROOT/egs2/$recipe_path"
  if [ ! -x "$recipe/$template" ]; then
    echo "error: $recipe/$template not found: ESPNET_ROOT=$ESPNET_ROOT is not an ESPnet" \
         "checkout with egs2/$recipe_path (set up as ESPnet's installation guide says)" >&2
    return 1
  fi
  echo "$recipe"
}

# config_encoder CONFIG: the encoder name a training config selects.
config_encoder() {
  sed -n 's/^encoder: *\([A-Za-z0-9_]*\).*/\1/p' "$1" | head -n 1
}

# energy_stage TASK EXP_DIR MODEL_FILE DATA_DIR AUDIO_FORMAT: the energy report of a
# spiking model after scoring (skipped, with a note, for ANN encoders).
energy_stage() {
  local task=$1 exp=$2 model=$3 data=$4 audio_format=$5
  local encoder
  encoder=$(config_encoder "$exp/config.yaml")
  case "$encoder" in
    iml_spikeformer|spike_driven_transformer) ;;
    *) echo "energy report: skipped, encoder '$encoder' has no spiking neurons"; return 0 ;;
  esac
  local type=sound
  case "$audio_format" in *ark*) type=kaldi_ark ;; esac
  echo "energy report: $exp -> $exp/energy"
  "${python:-python3}" -m espnet_imlspike.bin.energy_report \
    --"${task}"_train_config "$exp/config.yaml" --"${task}"_model_file "$exp/$model" \
    --data_path_and_name_and_type "$data/wav.scp,speech,$type" --output_dir "$exp/energy"
}

# parse_asr_args ARGS...: the options an ASR overlay handles itself; sets asr_config,
# inference_config, audio_format, inference_model, skip_energy (defaults set by the caller
# beforehand) and leaves every other option in the array ${args[@]} for asr.sh.
parse_asr_args() {
  args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --asr_config) asr_config=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
      --inference_config) inference_config=$2; shift 2 ;;
      --audio_format) audio_format=$2; shift 2 ;;
      --inference_asr_model) inference_model=$2; shift 2 ;;
      --skip_energy) skip_energy=$2; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [ -f "$asr_config" ] || { echo "error: --asr_config $asr_config: no such file" >&2; return 1; }
}
