#!/usr/bin/env bash
# Data for the TIPC chain test of one mode:
#
#   bash test_tipc/prepare.sh test_tipc/configs/ernievil2_demo/train_infer_python.txt lite_train_lite_infer
#
# Builds FashionScenes-CN sets with tools/make_demo_data.py (images from the Debian
# package dataset-fashion-mnist, installed by `bash scripts/install.sh --demo`), in
# the folders the config names for MODE:
#
#   the folder of -o Data.train.path   the training set (not in whole_infer)
#   the folder of --data               the evaluation and inference set
#
# each of size  lite = 256 train / 64 test scenes  (the lite_train / lite_infer side)
#          or  whole = 10000 train / 2000 test     (the whole_train / whole_infer side;
#                                                    the spec of `make demo`, so the same data and vocab).
# Then the vocab (-o Tokenizer.vocab_file, with tools/build_vocab.py from the train.tsv
# beside it) and the inference inputs: train_infer_img_dir (the test images as files)
# and train_infer_text_file (the caption of each test image, one a line).
# Idempotent: what is up to date is left alone. The config is read and checked
# first, and every input path it gives for MODE must exist at the end.
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: bash test_tipc/prepare.sh CONFIG MODE   (MODE: lite_train_lite_infer | lite_train_whole_infer | whole_infer | whole_train_whole_infer)" >&2
  exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
CONFIG=$1
MODE=$2
# shellcheck source=test_tipc/common_func.sh
source "$HERE/common_func.sh"
# The config path is taken from where you run this; the paths inside it from the repository root.
tipc_read_config "$CONFIG" "$MODE"
cd "$REPO" || exit 2

PYTHON=${TIPC_VALUE[python]}
command -v "$PYTHON" > /dev/null || tipc_bad "${TIPC_LINE[python]}" python "'$PYTHON' is not an installed program"
started=$(date +%s)
LITE_SIZE=(256 64)
WHOLE_SIZE=(10000 2000)

fail() {
  echo "prepare.sh: $*" >&2
  exit 1
}

# build_set DIR SIZE: a FashionScenes-CN set of SIZE (lite or whole) in DIR.
build_set() {
  local dir=$1 size=$2 status
  local -a counts=("${LITE_SIZE[@]}")
  [ "$size" = whole ] && counts=("${WHOLE_SIZE[@]}")
  echo "[prepare] $size set: ${counts[0]} train / ${counts[1]} test scenes -> $dir"
  "$PYTHON" tools/make_demo_data.py --output "$dir" --num-train "${counts[0]}" --num-test "${counts[1]}"
  status=$?
  [ "$status" -eq 0 ] || fail "tools/make_demo_data.py exited with status $status (its message above says why)"
}

# build_vocab VOCAB: VOCAB from the train.tsv beside it.
build_vocab() {
  local vocab=$1 status train
  train=$(dirname "$vocab")/train.tsv
  if [ -s "$vocab" ] && [ ! "$train" -nt "$vocab" ]; then
    echo "[prepare] $vocab is up to date"
    return
  fi
  "$PYTHON" tools/build_vocab.py --input "$train" --output "$vocab"
  status=$?
  [ "$status" -eq 0 ] || fail "tools/build_vocab.py exited with status $status"
}

# write_infer_inputs SET_DIR IMG_DIR TEXT_FILE: the test images of SET_DIR as files
# (infer.py embed-images reads files and folders) and the official caption of each
# test image, one a line. TEXT_FILE is written last: it marks both as complete.
write_infer_inputs() {
  local set_dir=$1 img_dir=$2 text_file=$3 status
  if [ -s "$text_file" ] && [ -d "$img_dir" ] && [ ! "$set_dir/test.tsv" -nt "$text_file" ]; then
    echo "[prepare] $img_dir and $text_file are up to date"
    return
  fi
  rm -rf -- "$img_dir" "$img_dir.tmp" "$text_file"
  mkdir -p -- "$(dirname "$img_dir")" "$(dirname "$text_file")"
  "$PYTHON" - "$set_dir" "$img_dir" "$text_file" <<'PY'
import base64
import os
import sys

set_dir, img_dir, text_file = sys.argv[1:]
tmp = img_dir + ".tmp"
os.makedirs(tmp)
count = 0
with open(os.path.join(set_dir, "test_imgs.tsv"), encoding="utf-8") as f:
    for line in f:
        image_id, data = line.rstrip("\n").split("\t")
        raw = base64.b64decode(data)
        ext = ".png" if raw.startswith(b"\x89PNG") else ".jpg"
        with open(os.path.join(tmp, image_id + ext), "wb") as out:
            out.write(raw)
        count += 1
with open(os.path.join(set_dir, "test.tsv"), encoding="utf-8") as f:
    texts = [line.split("\t", 1)[0] for line in f]
os.replace(tmp, img_dir)
with open(text_file, "w", encoding="utf-8") as out:
    out.write("\n".join(texts) + "\n")
print(f"[prepare] {count} images -> {img_dir}, {len(texts)} captions -> {text_file}")
PY
  status=$?
  [ "$status" -eq 0 ] || fail "writing the inference inputs from $set_dir failed (status $status)"
}

case "$MODE" in
  lite_train_lite_infer) train_size=lite; infer_size=lite ;;
  lite_train_whole_infer) train_size=lite; infer_size=whole ;;
  whole_infer) train_size=""; infer_size=whole ;;
  whole_train_whole_infer) train_size=whole; infer_size=whole ;;
esac
infer_dir=$(dirname "${TIPC_VALUE[--data]}")
if [ -n "$train_size" ]; then
  train_dir=$(dirname "${TIPC_VALUE[-o Data.train.path]}")
  if [ "$train_dir" = "$infer_dir" ] && [ "$train_size" != "$infer_size" ]; then
    tipc_bad "${TIPC_LINE[--data]}" --data "mode $MODE trains on a $train_size set and infers on a $infer_size set, but lines" \
      "${TIPC_LINE[-o Data.train.path]} and ${TIPC_LINE[--data]} put both in $infer_dir"
  fi
  build_set "$train_dir" "$train_size"
fi
if [ -z "$train_size" ] || [ "$train_dir" != "$infer_dir" ]; then
  build_set "$infer_dir" "$infer_size"
fi

vocab=${TIPC_VALUE[-o Tokenizer.vocab_file]}
if [ -f "$(dirname "$vocab")/train.tsv" ]; then
  build_vocab "$vocab"
fi
write_infer_inputs "$infer_dir" "${TIPC_VALUE[train_infer_img_dir]}" "${TIPC_VALUE[train_infer_text_file]}"

# Every input path the config gives for this mode must now exist.
for key in train_infer_img_dir train_infer_text_file "-o Data.train.path" "-o Tokenizer.vocab_file" --data; do
  path=${TIPC_VALUE[$key]-}
  if [ -n "$path" ] && [ "$path" != null ] && [ ! -e "$path" ]; then
    tipc_bad "${TIPC_LINE[$key]}" "$key" "'$path' (mode $MODE) does not exist after preparing: a set's files are train.tsv, test.tsv, and the vocab built beside a train.tsv"
  fi
done

if [ "$MODE" = whole_infer ]; then
  pretrained=${TIPC_VALUE[-o Global.pretrained]}
  if [ "$pretrained" = null ] || [ ! -e "$pretrained" ]; then
    echo "[prepare] note: whole_infer evaluates, exports and infers a trained model, and line ${TIPC_LINE[-o Global.pretrained]} (-o Global.pretrained) gives '$pretrained'," \
      "which does not exist yet: run \`make demo\` (it trains ./output/demo/train) or point the line at a checkpoint of ours."
  fi
fi
echo "[prepare] $MODE ready in $(( $(date +%s) - started ))s"
