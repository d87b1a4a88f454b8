#!/usr/bin/env bash
# The main job on the embedded default: inspect the shipped backbone, then train a frozen-MiniLM
# model with two heads (Rotten Tomatoes sentiment + BBC News topic) on 2 CPU cores, print each
# head's accuracy, and predict a few sentences. The run lands in runs/demo/ (plots included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
headkit inspect minilm
headkit train --config configs/demo.yaml --overwrite --no_progress
headkit predict runs/demo \
    --text "A gripping, beautifully acted thriller with a twist I never saw coming." \
    --text "The plot is a mess and the jokes fall flat." \
    --text "Shares in the bank fell sharply after quarterly profits missed forecasts." \
    --text "The striker scored twice as United won the cup final."
