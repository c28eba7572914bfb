#!/usr/bin/env bash
# Train every head of the paper's ablation on one feature store, with the paper's recipe.
#   scripts/train_heads.sh FEATURES_DIR OUT_DIR [DEVICE] [PROJ_DIM]
# writes OUT_DIR/<whisper>.<head>.safetensors (+ .curves.json) for
# tl_tr, tl_tr_low, last_linear, mean_linear, wa_linear, wa_tr. EPOCHS (default 30),
# LR (default: the recipe's), HEADS (default: all six) and PYTHON (default python3) come
# from the environment.
set -euo pipefail
features=$1
out=$2
device=${3:-cpu}
proj_dim=${4:-512}
python=${PYTHON:-python3}
name=$("$python" -c "import json, sys; print(json.load(open(sys.argv[1]))['whisper_name'])" "$features/meta.json")
mkdir -p "$out"
for head in ${HEADS:-tl_tr tl_tr_low last_linear mean_linear wa_linear wa_tr}; do
    "$python" -m whisper_at train "$features" --out "$out/$name.$head.safetensors" \
        --head-type "$head" --proj-dim "$proj_dim" --epochs "${EPOCHS:-30}" \
        --device "$device" --seed 0 --no-progress ${LR:+--lr "$LR"}
done
