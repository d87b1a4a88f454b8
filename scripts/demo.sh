#!/usr/bin/env bash
# The main job on the embedded default: the shipped MiniLM and SmolLM2 checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
headkit inspect minilm
headkit inspect smollm2
