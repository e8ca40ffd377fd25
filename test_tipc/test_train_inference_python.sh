#!/usr/bin/env bash
# TIPC train-to-inference chain: train -> evaluate -> export -> Paddle Inference.
#
#   bash test_tipc/prepare.sh                 test_tipc/configs/ernievil2_demo/train_infer_python.txt lite_train_lite_infer
#   bash test_tipc/test_train_inference_python.sh test_tipc/configs/ernievil2_demo/train_infer_python.txt lite_train_lite_infer
#
# Modes: lite_train_lite_infer | lite_train_whole_infer | whole_infer | whole_train_whole_infer.
# Every command's outcome is appended to OUTPUT/<model_name>/<MODE>/results_python.log as
# "Run successfully with command - CMD" or "Run failed with command - CMD", and its
# output goes to a log file beside it. OUTPUT is the config's -o Global.output_dir line,
# or $TIPC_OUTPUT_ROOT when set. The folder OUTPUT/<model_name>/<MODE> is emptied first.
# Exit status: 0 when every command ran and succeeded, 1 when one failed (or nothing
# could run), 2 for a bad config, mode or missing input. See test_tipc/README.md.
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: bash test_tipc/test_train_inference_python.sh CONFIG MODE   (MODE: lite_train_lite_infer | lite_train_whole_infer | whole_infer | whole_train_whole_infer)" >&2
  exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=test_tipc/common_func.sh
source "$HERE/common_func.sh"
# The config path is taken from where you run this; the paths inside it from the repository root.
tipc_read_config "$1" "$2"
MODE=$TIPC_MODE
# $TIPC_OUTPUT_ROOT is taken from where you run this; the config's output line from the repository root.
if [ -n "${TIPC_OUTPUT_ROOT:-}" ] && [[ "$TIPC_OUTPUT_ROOT" != /* ]]; then
  TIPC_OUTPUT_ROOT=$PWD/$TIPC_OUTPUT_ROOT
fi
cd "$REPO" || exit 2
started=$(date +%s)

PYTHON=${TIPC_VALUE[python]}
command -v "$PYTHON" > /dev/null || tipc_bad "${TIPC_LINE[python]}" python "'$PYTHON' is not an installed program"
MODEL=${TIPC_VALUE[model_name]}
OUTPUT_ROOT=${TIPC_OUTPUT_ROOT:-${TIPC_VALUE[-o Global.output_dir]}}
MODE_DIR=$OUTPUT_ROOT/$MODEL/$MODE
RESULTS=$MODE_DIR/results_python.log

# --- inputs: made by prepare.sh (and, for whole_infer, a trained model) ---------
for key in train_infer_img_dir train_infer_text_file "-o Data.train.path" "-o Tokenizer.vocab_file" --data; do
  path=${TIPC_VALUE[$key]-}
  if [ -n "$path" ] && [ "$path" != null ] && [ ! -e "$path" ]; then
    tipc_die "$path (line ${TIPC_LINE[$key]}, $key) does not exist; run first: bash test_tipc/prepare.sh $TIPC_CONFIG $MODE"
  fi
done
PRETRAINED=${TIPC_VALUE[-o Global.pretrained]}
if [ "$MODE" = whole_infer ]; then
  if [ "$PRETRAINED" = null ] || [ ! -e "$PRETRAINED" ]; then
    tipc_die "whole_infer evaluates, exports and infers a trained model without training one, but line" \
      "${TIPC_LINE[-o Global.pretrained]} (-o Global.pretrained) gives '$PRETRAINED' for whole_infer, which does not exist." \
      "Run \`make demo\` (it trains ./output/demo/train), or point the line at a checkpoint of ours" \
      "(a training output folder or its checkpoints/step_N) trained with the vocab of line ${TIPC_LINE[-o Tokenizer.vocab_file]}."
  fi
fi

# --- what this machine can run ------------------------------------------------
mkdir -p -- "$MODE_DIR" || exit 2
rm -rf -- "${MODE_DIR:?}"/* || exit 2
: > "$RESULTS"
caps=$("$PYTHON" -c '
import paddle
from paddle import inference
cuda = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
trt = cuda and tuple(inference.get_trt_compile_version()) != (0, 0, 0)
print(int(cuda), int(trt))' 2> "$MODE_DIR/device_check.log")
status=$?
[ "$status" -eq 0 ] || tipc_die "'$PYTHON' cannot import paddle (exit status $status); see $MODE_DIR/device_check.log"
read -r HAS_CUDA HAS_TRT <<< "$(tail -n 1 <<< "$caps")"

echo "[tipc] $MODEL $MODE: config $TIPC_CONFIG; output $MODE_DIR; CUDA: $([ "$HAS_CUDA" = 1 ] && echo yes || echo no), TensorRT: $([ "$HAS_TRT" = 1 ] && echo yes || echo no)"

# --- running and recording commands ---------------------------------------------
N_OK=0
N_FAILED=0
N_SKIPPED=0

note() {
  echo "[tipc] note: skipped $*"
  echo "Skipped - $*" >> "$RESULTS"
  N_SKIPPED=$((N_SKIPPED + 1))
}

# run_cmd NAME CMD...: run CMD with its output in MODE_DIR/NAME.log and record the outcome.
run_cmd() {
  local name=$1 cmdline status t0
  shift
  local log=$MODE_DIR/$name.log
  printf -v cmdline '%q ' "$@"
  cmdline=${cmdline% }
  echo "[tipc] $name: $cmdline"
  t0=$(date +%s)
  "$@" > "$log" 2>&1
  status=$?
  if [ "$status" -eq 0 ]; then
    echo "Run successfully with command - $cmdline" >> "$RESULTS"
    N_OK=$((N_OK + 1))
    echo "[tipc]   ok in $(( $(date +%s) - t0 ))s, log: $log"
  else
    echo "Run failed with command - $cmdline" >> "$RESULTS"
    N_FAILED=$((N_FAILED + 1))
    echo "[tipc]   FAILED with exit status $status after $(( $(date +%s) - t0 ))s; the end of $log:"
    tail -n 15 "$log" | sed 's/^/[tipc]   | /'
  fi
  return "$status"
}

# words KEY: the command of a config line, split on spaces, in WORDS.
words() {
  read -r -a WORDS <<< "${TIPC_VALUE[$1]}"
}

VOCAB=${TIPC_VALUE[-o Tokenizer.vocab_file]}

# --- evaluation, export and inference of one model ----------------------------
# chain RUN DEVICE WEIGHTS
chain() {
  local run=$1 device=$2 weights=$3
  local run_dir=$MODE_DIR/$run
  mkdir -p -- "$run_dir/eval"

  if [ "${TIPC_VALUE[eval]}" != null ]; then
    local features=$run_dir/eval/features.npz
    words eval
    if run_cmd "${run}_eval" "$PYTHON" "${WORDS[@]}" -o "Tokenizer.vocab_file=$VOCAB" -o "Global.device=$device" \
      --weights "$weights" --data "${TIPC_VALUE[--data]}" --output "$features"; then
      if [ "${TIPC_VALUE[eval_metrics]}" != null ]; then
        words eval_metrics
        run_cmd "${run}_eval_metrics" "$PYTHON" "${WORDS[@]}" "$features" --json "$run_dir/eval/retrieval.json"
      fi
    elif [ "${TIPC_VALUE[eval_metrics]}" != null ]; then
      note "eval_metrics of $run: its feature extraction failed"
    fi
  fi

  words norm_export
  if ! run_cmd "${run}_export" "$PYTHON" "${WORDS[@]}" -o "Tokenizer.vocab_file=$VOCAB" -o "Global.device=$device" \
    --weights "$weights" --output "$run_dir/export"; then
    note "inference of $run: its export failed"
    return
  fi
  infer "$run" "$run_dir/export"
}

# infer_one RUN EXPORT TOWER DEVICE_TAG DEVICE_ARGS...
infer_one() {
  local run=$1 export_dir=$2 tower=$3 tag=$4
  shift 4
  local out=$MODE_DIR/$run/infer/${tower}_${tag}.npz
  local -a input
  mkdir -p -- "$MODE_DIR/$run/infer"
  if [ "$tower" = image ]; then
    input=(embed-images --images "${TIPC_VALUE[train_infer_img_dir]}")
  else
    input=(embed-texts --text-file "${TIPC_VALUE[train_infer_text_file]}")
  fi
  words inference
  run_cmd "${run}_infer_${tower}_${tag}" "$PYTHON" "${WORDS[@]}" "${input[@]}" --model "$export_dir" --output "$out" "$@"
}

# infer RUN EXPORT: every combination of the inference lines that this machine can run.
infer() {
  local run=$1 export_dir=$2 device no_onednn threads bs trt precision tower
  local -a devices towers onednn_alts thread_alts bs_alts trt_alts precision_alts
  tipc_alternatives --device; devices=("${TIPC_ITEMS[@]}")
  tipc_alternatives infer_towers; towers=("${TIPC_ITEMS[@]}")
  tipc_alternatives --no-onednn; onednn_alts=("${TIPC_ITEMS[@]}")
  tipc_alternatives --threads; thread_alts=("${TIPC_ITEMS[@]}")
  tipc_alternatives --batch-size; bs_alts=("${TIPC_ITEMS[@]}")
  tipc_alternatives --tensorrt; trt_alts=("${TIPC_ITEMS[@]}")
  tipc_alternatives --precision; precision_alts=("${TIPC_ITEMS[@]}")
  for device in "${devices[@]}"; do
    if [ "$device" = cpu ]; then
      # --tensorrt and --precision (lines ${TIPC_LINE[--tensorrt]}, ${TIPC_LINE[--precision]}) are GPU options.
      for no_onednn in "${onednn_alts[@]}"; do
        local -a onednn_flag=()
        [ "$no_onednn" = True ] && onednn_flag=(--no-onednn)
        local onednn=True
        [ "$no_onednn" = True ] && onednn=False
        for threads in "${thread_alts[@]}"; do
          for bs in "${bs_alts[@]}"; do
            for tower in "${towers[@]}"; do
              infer_one "$run" "$export_dir" "$tower" "cpu_onednn_${onednn}_threads_${threads}_bs_${bs}" \
                --device cpu "${onednn_flag[@]+"${onednn_flag[@]}"}" --threads "$threads" --batch-size "$bs"
            done
          done
        done
      done
      continue
    fi
    if [ "$HAS_CUDA" != 1 ]; then
      note "inference of $run with --device gpu (--tensorrt ${TIPC_RAW[--tensorrt]} x --precision ${TIPC_RAW[--precision]} x --batch-size ${TIPC_RAW[--batch-size]} x ${TIPC_RAW[infer_towers]}): no CUDA device on this machine"
      continue
    fi
    for trt in "${trt_alts[@]}"; do
      if [ "$trt" = True ] && [ "$HAS_TRT" != 1 ]; then
        note "inference of $run with --device gpu --tensorrt: this Paddle was built without TensorRT"
        continue
      fi
      local -a trt_flag=()
      [ "$trt" = True ] && trt_flag=(--tensorrt)
      for precision in "${precision_alts[@]}"; do
        if [ "$precision" = fp16 ] && [ "$trt" = False ]; then
          note "inference of $run with --device gpu --precision fp16 without --tensorrt: fp16 runs through TensorRT only"
          continue
        fi
        for bs in "${bs_alts[@]}"; do
          for tower in "${towers[@]}"; do
            infer_one "$run" "$export_dir" "$tower" "gpu_trt_${trt}_${precision}_bs_${bs}" \
              --device gpu "${trt_flag[@]+"${trt_flag[@]}"}" --precision "$precision" --batch-size "$bs"
          done
        done
      done
    done
  done
}

# --- training ------------------------------------------------------------------
# train TRAINER DEVICE GPUS AMP: train, then evaluate, export and infer the result.
train() {
  local trainer=$1 device=$2 gpus=$3 amp=$4 run
  local -a launch
  if [ "$device" = cpu ]; then
    run=${trainer}_cpu_amp_${amp}
    launch=("$PYTHON")
  elif [[ "$gpus" == *,* ]]; then
    run=${trainer}_gpus_${gpus//,/_}_amp_${amp}
    launch=("$PYTHON" -m paddle.distributed.launch --gpus "$gpus" --log_dir "$MODE_DIR/$run/launch")
  else
    run=${trainer}_gpus_${gpus}_amp_${amp}
    launch=(env "CUDA_VISIBLE_DEVICES=$gpus" "$PYTHON")
  fi
  local run_dir=$MODE_DIR/$run
  mkdir -p -- "$run_dir"
  local -a pretrained=()
  [ "$PRETRAINED" != null ] && pretrained=(-o "Global.pretrained=$PRETRAINED")
  words "$trainer"
  if ! run_cmd "${run}_train" "${launch[@]}" "${WORDS[@]}" \
    -o "Global.device=$device" -o "Train.amp=$amp" -o "Train.max_steps=${TIPC_VALUE[-o Train.max_steps]}" \
    -o "Global.output_dir=$run_dir/train" -o "Train.batch_size=${TIPC_VALUE[-o Train.batch_size]}" \
    "${pretrained[@]+"${pretrained[@]}"}" \
    -o "Data.train.path=${TIPC_VALUE[-o Data.train.path]}" -o "Tokenizer.vocab_file=$VOCAB"; then
    note "evaluation, export and inference of $run: its training failed"
    return
  fi
  local weights=$run_dir/train
  [ "${TIPC_VALUE[train_model_name]}" != latest ] && weights=$run_dir/train/checkpoints/${TIPC_VALUE[train_model_name]}
  chain "$run" "$device" "$weights"
}

if [ "$MODE" = whole_infer ]; then
  chain pretrained cpu "$PRETRAINED"
else
  tipc_alternatives trainer; trainers=("${TIPC_ITEMS[@]}")
  tipc_alternatives "-o Global.device"; train_devices=("${TIPC_ITEMS[@]}")
  tipc_alternatives gpu_list; gpu_sets=("${TIPC_ITEMS[@]}")
  tipc_alternatives "-o Train.amp"; amps=("${TIPC_ITEMS[@]}")
  for trainer in "${trainers[@]}"; do
    for device in "${train_devices[@]}"; do
      if [ "$device" = cpu ]; then
        for amp in "${amps[@]}"; do train "$trainer" cpu - "$amp"; done
        continue
      fi
      for gpus in "${gpu_sets[@]}"; do
        if [ "$HAS_CUDA" != 1 ]; then
          note "$trainer on GPU(s) $gpus (gpu_list, line ${TIPC_LINE[gpu_list]}) and its evaluation, export and inference: no CUDA device on this machine"
          continue
        fi
        for amp in "${amps[@]}"; do train "$trainer" gpu "$gpus" "$amp"; done
      done
    done
  done
fi

echo "[tipc] $MODEL $MODE: $N_OK succeeded, $N_FAILED failed, $N_SKIPPED skipped in $(( $(date +%s) - started ))s; results: $RESULTS"
if [ "$N_FAILED" -gt 0 ]; then
  grep '^Run failed' "$RESULTS" | sed 's/^/[tipc]   /'
  exit 1
fi
if [ "$N_OK" -eq 0 ]; then
  echo "[tipc] nothing ran on this machine (see the notes above)" >&2
  exit 1
fi
exit 0
