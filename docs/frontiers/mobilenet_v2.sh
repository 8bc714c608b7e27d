#!/usr/bin/env bash
# The MobileNetV2 frontier by cut (docs/frontiers.md, "MobileNetV2 on Fashion-MNIST"): keras.applications
# MobileNetV2 (alpha 0.35, random weights) on Fashion-MNIST at 32x32 grey, 5 epochs at batch 128; at each cut
# the undefended network and the project's best defence (a 4-channel bottleneck, attacker-aware training with a
# label-aware in-loop decoder), each attacked at the quick budget, then exported and timed with LiteRT.
# Usage: bash docs/frontiers/mobilenet_v2.sh [RUN_DIR] [CUT ...]   (default runs/mnv2; about 25 minutes a cut)
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_CPP_MIN_LOG_LEVEL=2
RUN_DIR=${1:-runs/mnv2}
shift || true
CUTS=("$@")
[ ${#CUTS[@]} -gt 0 ] || CUTS=(block_5_add block_2_add expanded_conv_project_BN block_12_add)
COMMON=(--dataset=fashion_mnist --arch=MobileNetV2 --arch_options=alpha=0.35 --image_size=32x32 --channels=1
        --epochs=5 --batch_size=128)
for cut in "${CUTS[@]}"; do
  for defence in plain b4_adv1; do
    dir="$RUN_DIR/${cut}_${defence}"
    flags=(--cut="$cut" --alpha=0)
    [ "$defence" = plain ] || flags+=(--bottleneck=4 --adversary_weight=1 --adversary_label_aware)
    [ -f "$dir/metrics.json" ] || python3 -m train.train "${COMMON[@]}" "${flags[@]}" --model_dir="$dir"
    [ -f "$dir/leakage.json" ] || python3 -m train.leakage --model_dir="$dir" --quick
    [ -f "$dir/export/client/manifest.json" ] || python3 -m export.export --model_dir="$dir" --variants=float32,int8
    python3 -m export.benchmark --export_dir="$dir/export" > "$dir/benchmark.txt" 2>&1 || true
    echo "== done $dir"
  done
done
