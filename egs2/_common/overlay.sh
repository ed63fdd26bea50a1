# Shared by the recipe overlays (egs2/<corpus>/<task>/run.sh): find the user's ESPnet recipe,
# run its stock template script (asr.sh / spk.sh) with the overlay's defaults and every option
# of the user passed on, and run the energy report between scoring and packing. Sourced, not run.
#
# Order of the stages (ASR; SPK in brackets):
#   asr.sh stages up to 13, scoring [spk.sh up to 8, metrics]
#   energy report of the spiking model -> <exp>/energy/, its table appended to <exp>/RESULTS.md,
#     its plots copied to <exp>/images/ (both are what the packing stage puts into the zip)
#   asr.sh stages 14-15, packing and upload [spk.sh 9-10]
# Every step runs inside the ESPnet recipe dir with the recipe's Python: asr.sh and spk.sh
# source ./path.sh (which sources tools/activate_python.sh) and call ${python}; the energy step
# does the same in a subshell, with the same --python.

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

# opt_value NAME DEFAULT ARGS...: the value ARGS give option NAME, read as ESPnet's
# utils/parse_options.sh reads them ("--name value" pairs, "-" and "_" alike in names, the
# last occurrence wins); DEFAULT when ARGS do not set it.
opt_value() {
  local name=$1 value=$2 key
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --*)
        key=${1#--}
        [ "${key//-/_}" = "$name" ] && [ $# -ge 2 ] && value=$2
        [ $# -ge 2 ] && shift 2 || shift ;;
      *) shift ;;
    esac
  done
  printf '%s\n' "$value"
}

# config_encoder CONFIG: the encoder name a training config selects.
config_encoder() {
  sed -n 's/^encoder: *\([A-Za-z0-9_]*\).*/\1/p' "$1" | head -n 1
}

# absolute_path PATH: PATH made absolute against the caller's directory when it exists there
# (a config of the user's), else unchanged (asr.sh then reads it inside the ESPnet recipe dir,
# like its own conf/decode_asr_transformer.yaml).
absolute_path() {
  if [ -e "$1" ]; then
    echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
  else
    echo "$1"
  fi
}

# split_overlay_args ARGS...: takes out the overlay's own options (--skip_energy true|false,
# --energy_set NAME, --energy_opts "OPTIONS FOR energy_report"), makes --asr_config,
# --spk_config and --inference_config paths absolute, and leaves everything else, in order, in
# ${user_args[@]} for asr.sh / spk.sh.
split_overlay_args() {
  user_args=()
  while [ $# -gt 0 ]; do
    case "${1//-/_}" in
      __skip_energy) skip_energy=$2; shift 2 ;;
      __energy_set) energy_set=$2; shift 2 ;;
      __energy_opts) energy_opts=$2; shift 2 ;;
      __asr_config|__spk_config|__inference_config)
        [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; return 1; }
        user_args+=("$1" "$(absolute_path "$2")"); shift 2 ;;
      *) user_args+=("$1"); shift ;;
    esac
  done
  case "$skip_energy" in
    true|false) ;;
    *) echo "error: --skip_energy expects true or false, got '$skip_energy'" >&2; return 1 ;;
  esac
}

# energy_data_triple FEATS_TYPE AUDIO_FORMAT DUMPDIR SET: the "path,speech,type" of a test set
# as asr.sh stage 3 dumps it.
energy_data_triple() {
  local feats_type=$1 audio_format=$2 dumpdir=$3 set=$4
  case "$feats_type" in
    raw)
      case "$audio_format" in
        *ark*) echo "$dumpdir/raw/$set/wav.scp,speech,kaldi_ark" ;;
        *) echo "$dumpdir/raw/$set/wav.scp,speech,sound" ;;
      esac ;;
    raw_copy) echo "$dumpdir/raw_copy/$set/wav.scp,speech,sound" ;;
    *) echo "$dumpdir/$feats_type/$set/feats.scp,speech,kaldi_ark" ;;
  esac
}

# pick_energy_set WANTED TEST_SETS: WANTED if it is one of TEST_SETS, else the first test set.
pick_energy_set() {
  local wanted=$1 name
  for name in $2; do
    [ "$name" = "$wanted" ] && { echo "$wanted"; return 0; }
  done
  echo "${2%% *}"
}

# energy_step TASK EXP MODEL DATA_TRIPLE PYTHON: the energy report of a trained spiking model
# (skipped, with a note, for ANN encoders), run in the current recipe dir with the recipe's
# Python (./path.sh, then PYTHON, as asr.sh runs its stages). Writes EXP/energy/ (replacing
# an earlier report, as scoring rewrites RESULTS.md), copies its plots to
# EXP/images/energy_*.png and appends its tables to EXP/RESULTS.md.
energy_step() {
  local task=$1 exp=$2 model=$3 triple=$4 python=$5
  if [ ! -f "$exp/config.yaml" ] || [ ! -e "$exp/$model" ]; then
    echo "error: energy report: no trained model $exp/$model (with $exp/config.yaml);" \
         "run the training stages first or pass --skip_energy true" >&2
    return 1
  fi
  local encoder
  encoder=$(config_encoder "$exp/config.yaml")
  # the plugin's spiking encoders (ESPnet's own, e.g. transformer, have no spiking neurons)
  case "$encoder" in
    iml_spikeformer*|spike_driven_transformer|smlp) ;;
    *) echo "energy report: skipped, encoder '$encoder' is not a spiking encoder of" \
            "espnet_imlspike (iml_spikeformer*, spike_driven_transformer, smlp)"
       return 0 ;;
  esac
  echo "energy report: $exp ($triple) -> $exp/energy (log: $exp/energy/energy_report.log)"
  mkdir -p "$exp/energy"
  # shellcheck disable=SC2086  # energy_opts: several options, split as asr.sh splits asr_args
  (
    . ./path.sh
    "$python" -m espnet_imlspike.bin.energy_report \
      --"${task}"_train_config "$exp/config.yaml" --"${task}"_model_file "$exp/$model" \
      --data_path_and_name_and_type "$triple" --output_dir "$exp/energy" --overwrite true \
      ${energy_opts:-} \
      > "$exp/energy/energy_report.log" 2>&1 \
      || { tail -n 30 "$exp/energy/energy_report.log" >&2; exit 1; }
    "$python" - "$exp" <<'PYTHON'
# Append the energy report (summary, per-layer table, spike statistics) to EXP/RESULTS.md,
# replacing an earlier copy, and copy its plots to EXP/images/ (packed with the model).
import json
import re
import shutil
import sys
from pathlib import Path

exp = Path(sys.argv[1])
energy = exp / "energy"
begin, end = "<!-- espnet_imlspike energy report: begin -->", "<!-- espnet_imlspike energy report: end -->"
text = (energy / "energy.md").read_text().strip()
text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)  # one level below RESULTS.md's "# RESULTS"
summary, _, layers = text.partition("\n### ")
details = "### " + layers if layers else ""
report = json.loads((energy / "energy.json").read_text())
firing = report.get("firing") or {}
if firing:
    rows = ["| Neuron layer | Firing rate | Non-zero outputs | Silent neurons |", "|---|---|---|---|"]
    for name, f in firing.items():
        rows.append(f"| {name} | {f.get('rate', float('nan')):.4f} | "
                    f"{f.get('nonzero_fraction', float('nan')):.4f} | "
                    f"{f.get('silent_fraction', float('nan')):.4f} |")
    details += ("\n\n### Spike statistics\n\nFiring rate: spikes per neuron per timestep; "
                "silent: neurons firing in less than 0.1% of their steps "
                "(`energy/firing_rates.npz` has every neuron).\n\n" + "\n".join(rows))
images = exp / "images"
images.mkdir(exist_ok=True)
plots = []
for png in sorted(energy.glob("*.png")):
    shutil.copy(png, images / f"energy_{png.name}")
    plots.append(f"images/energy_{png.name}")
if plots:
    summary += "\n\nPlots: " + ", ".join(f"`{p}`" for p in plots)
text = summary
if details.strip():
    text += ("\n\n<details><summary>Per-layer energy and spike statistics</summary>\n\n"
             + details.strip() + "\n\n</details>")
results = exp / "RESULTS.md"
old = results.read_text() if results.exists() else "# RESULTS\n"
old = re.sub(re.escape(begin) + ".*?" + re.escape(end) + "\n?", "", old, flags=re.S)
results.write_text(old.rstrip("\n") + "\n\n" + begin + "\n" + text + "\n" + end + "\n")
print(summary)
print(f"energy report: tables appended to {results}, plots copied to {images}")
PYTHON
  )
}

# run_asr_overlay CORPUS/TASK ARGS...: asr.sh of the ESPnet recipe with ARGS (the overlay's
# defaults first, then the user's options, which win as the later ones), split around the
# energy step.
run_asr_overlay() {
  local recipe_path=$1
  shift
  skip_energy=false energy_set="" energy_opts=""
  split_overlay_args "$@"
  local all=("${user_args[@]}")
  local asr_config
  asr_config=$(opt_value asr_config "" "${all[@]}")
  [ -f "$asr_config" ] || { echo "error: --asr_config $asr_config: no such file" >&2; return 1; }
  local tag stage stop_stage python expdir asr_exp
  # the exp dir is named after the config unless the user names it (--asr_tag / --asr_exp)
  tag=$(opt_value asr_tag "$(basename "$asr_config" .yaml)" "${all[@]}")
  [ -n "$tag" ] || { echo "error: --asr_tag must not be empty" >&2; return 1; }
  all=(--asr_tag "$tag" "${all[@]}")
  stage=$(opt_value stage 1 "${all[@]}")
  stop_stage=$(opt_value stop_stage 10000 "${all[@]}")
  python=$(opt_value python python3 "${all[@]}")
  expdir=$(opt_value expdir exp "${all[@]}")
  asr_exp=$(opt_value asr_exp "$expdir/asr_$tag" "${all[@]}")
  local recipe
  recipe=$(espnet_recipe "$recipe_path" asr.sh)
  cd "$recipe"
  if [ "$stage" -le 13 ]; then
    ./asr.sh "${all[@]}" --stop_stage "$(( stop_stage < 13 ? stop_stage : 13 ))"
  fi
  if [ "$skip_energy" = false ] && [ "$stage" -le 13 ] && [ "$stop_stage" -ge 13 ] \
      && [ "$(opt_value skip_eval false "${all[@]}")" = false ]; then
    local name
    name=$(pick_energy_set "$energy_set" "$(opt_value test_sets "" "${all[@]}")")
    energy_step asr "$asr_exp" "$(opt_value inference_asr_model valid.acc.ave.pth "${all[@]}")" \
      "$(energy_data_triple "$(opt_value feats_type raw "${all[@]}")" \
         "$(opt_value audio_format flac "${all[@]}")" "$(opt_value dumpdir dump "${all[@]}")" \
         "$name")" "$python"
  fi
  if [ "$stop_stage" -ge 14 ] && { [ "$(opt_value skip_packing true "${all[@]}")" = false ] \
      || [ "$(opt_value skip_upload_hf true "${all[@]}")" = false ]; }; then
    ./asr.sh "${all[@]}" --stage "$(( stage > 14 ? stage : 14 ))"
  fi
}

# run_spk_overlay CORPUS/TASK ARGS...: spk.sh likewise (energy step after stage 8, metrics;
# packing is stage 9, upload 10).
run_spk_overlay() {
  local recipe_path=$1
  shift
  skip_energy=false energy_set="" energy_opts=""
  split_overlay_args "$@"
  local all=("${user_args[@]}")
  local spk_config
  spk_config=$(opt_value spk_config "" "${all[@]}")
  [ -f "$spk_config" ] || { echo "error: --spk_config $spk_config: no such file" >&2; return 1; }
  local tag stage stop_stage python expdir spk_exp
  tag=$(opt_value spk_tag "$(basename "$spk_config" .yaml)" "${all[@]}")
  [ -n "$tag" ] || { echo "error: --spk_tag must not be empty" >&2; return 1; }
  all=(--spk_tag "$tag" "${all[@]}")
  stage=$(opt_value stage 1 "${all[@]}")
  stop_stage=$(opt_value stop_stage 10000 "${all[@]}")
  python=$(opt_value python python3 "${all[@]}")
  expdir=$(opt_value expdir exp "${all[@]}")
  spk_exp=$(opt_value spk_exp "$expdir/spk_$tag" "${all[@]}")
  # spk.sh adds _sp to the exp dir whenever it speed-perturbs (its default does)
  [ -n "$(opt_value speed_perturb_factors "0.9 1.0 1.1" "${all[@]}")" ] && spk_exp=${spk_exp}_sp
  local recipe
  recipe=$(espnet_recipe "$recipe_path" spk.sh)
  cd "$recipe"
  if [ "$stage" -le 8 ]; then
    ./spk.sh "${all[@]}" --stop_stage "$(( stop_stage < 8 ? stop_stage : 8 ))"
  fi
  if [ "$skip_energy" = false ] && [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
    local name
    name=$(pick_energy_set "$energy_set" "$(opt_value test_sets "" "${all[@]}")")
    # the test set's own audio (spk.sh formats only the trial lists of test sets)
    energy_step spk "$spk_exp" "$(opt_value inference_model valid.eer.best.pth "${all[@]}")" \
      "data/$name/wav.scp,speech,sound" "$python"
  fi
  if [ "$stop_stage" -ge 9 ] && { [ "$(opt_value skip_packing true "${all[@]}")" = false ] \
      || [ "$(opt_value skip_upload_hf true "${all[@]}")" = false ]; }; then
    ./spk.sh "${all[@]}" --stage "$(( stage > 9 ? stage : 9 ))"
  fi
}
