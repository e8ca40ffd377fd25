#!/usr/bin/env bash
# The main job on the embedded demo (run by `make demo` after the install step):
# FashionScenes-CN from real Fashion-MNIST images -> multi-view pre-training ->
# retrieval evaluation (official + multi-ground-truth) -> zero-shot classification of
# single garments -> export -> Paddle Inference -> example queries (printed, and drawn
# in OUT/examples.png).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="bash scripts/python.sh"  # .venv's interpreter when install.sh made one
DATA=${DEMO_DATA:-demo_data/fashion_scenes_cn}
OUT=${DEMO_OUT:-output/demo}
CONFIG=${DEMO_CONFIG:-configs/demo/single_view.yaml}
NUM_TRAIN=${DEMO_NUM_TRAIN:-10000}
NUM_TEST=${DEMO_NUM_TEST:-2000}
export PYTHONWARNINGS=ignore
started=$(date +%s)
stage() { echo; echo "== [$(( $(date +%s) - started ))s] $*"; }

stage "1/7 demo data: $NUM_TRAIN train + $NUM_TEST test scenes -> $DATA"
$PY tools/make_demo_data.py --output "$DATA" --num-train "$NUM_TRAIN" --num-test "$NUM_TEST"
$PY tools/build_vocab.py --input "$DATA/train.tsv" --output "$DATA/vocab.txt"

stage "2/7 pre-training ($CONFIG) -> $OUT/train"
# Train.resume=never: a re-run trains afresh (idempotent), never continuing an older demo's checkpoints.
$PY tools/train.py -c "$CONFIG" -o Global.output_dir="$OUT/train" -o Train.resume=never \
    -o Tokenizer.vocab_file="$DATA/vocab.txt" \
    -o Data.train="{format: official_tsv, path: $DATA/train.tsv}" -o Data.val=null

stage "3/7 retrieval on the test split (the official protocol, then multi-ground-truth)"
$PY tools/extract_features.py -c "$CONFIG" -o Tokenizer.vocab_file="$DATA/vocab.txt" \
    --weights "$OUT/train" --data "$DATA/test.tsv" --output "$OUT/test_official.npz" --num-workers 1
$PY tools/extract_features.py -c "$CONFIG" -o Tokenizer.vocab_file="$DATA/vocab.txt" \
    --weights "$OUT/train" --format chinese_clip --data "$DATA" --split test \
    --output "$OUT/test_multi_gt.npz" --num-workers 1
$PY tools/eval_retrieval.py "$OUT/test_official.npz" --protocol official --json "$OUT/retrieval_official.json" | tee "$OUT/retrieval.txt"
$PY tools/eval_retrieval.py "$OUT/test_multi_gt.npz" --protocol multi_gt --json "$OUT/retrieval_multi_gt.json" | tee -a "$OUT/retrieval.txt"

stage "4/7 zero-shot classification: the ten garment classes in Chinese prompts, 1,000 single garments"
# In-process decoding: for 1,000 small images a worker process costs more than it saves.
$PY tools/eval_zeroshot.py -c "$CONFIG" -o Tokenizer.vocab_file="$DATA/vocab.txt" --weights "$OUT/train" \
    --images "$DATA/zeroshot_imgs.tsv" --labels "$DATA/zeroshot_garment_labels.tsv" \
    --classes "$DATA/zeroshot_garment_classes.txt" --templates "$DATA/zeroshot_templates.txt" \
    --num-workers 0 --json "$OUT/zeroshot.json" | tee "$OUT/zeroshot.txt"

stage "5/7 export both towers for Paddle Inference -> $OUT/export"
$PY tools/export_model.py -c "$CONFIG" -o Tokenizer.vocab_file="$DATA/vocab.txt" \
    --weights "$OUT/train" --output "$OUT/export" --overwrite

stage "6/7 Paddle Inference: example queries on the test images"
$PY tools/demo_report.py --model "$OUT/export" --data "$DATA" --output "$OUT" | tee "$OUT/examples.txt"

stage "7/7 results"
cat "$OUT/retrieval.txt"
grep "^zero-shot:" "$OUT/zeroshot.txt"
echo "example queries: $OUT/examples.txt, picture: $OUT/examples.png"
echo "training log: $OUT/train/train.log; VisualDL: visualdl --logdir $OUT/train/vdl"
echo "done in $(( $(date +%s) - started ))s"
