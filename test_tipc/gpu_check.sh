#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and paddlepaddle-gpu: the official-fixture parity
# on the GPU, AMP + FlashAttention training against fp32, Paddle Inference (fp32, TensorRT fp16)
# against dygraph, and the service with 1 and 32 requests in flight. One table, also as JSON.
#
#   bash test_tipc/gpu_check.sh [--output gpu_check.json] [--fixtures DIR] [--steps 50] [--batch 32]
#
# Exit status: 0 every check passed, 1 a check failed, 2 no GPU (or a bad option).
# Described in test_tipc/README.md ("GPU check").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# fp32 means fp32: without this, Ampere and later GPUs run fp32 matmuls in TF32, and the fp32
# parity and the fp32 baseline of the AMP comparison would not be what they say.
export NVIDIA_TF32_OVERRIDE="${NVIDIA_TF32_OVERRIDE:-0}"
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
