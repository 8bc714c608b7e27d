#!/usr/bin/env bash
# The MobileNetV2 frontier by cut (docs/frontiers.md, "MobileNetV2 on Fashion-MNIST"): keras.applications
# MobileNetV2 (alpha 0.35, random weights) on Fashion-MNIST at 32x32 grey, 5 epochs at batch 128; at each cut
# the undefended network and the project's best defence (a 4-channel bottleneck, attacker-aware training with a
# label-aware in-loop decoder), each attacked at the quick budget, then exported and timed with LiteRT.
# Usage: bash docs/frontiers/mobilenet_v2.sh [RUN_DIR] [CUT ...]   (default runs/mnv2; about 40 minutes a cut
# on 2 cores; with the emulated Pi built (bash edge/pi_userland.sh build), each client is timed there too)
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
    if [ -x .cache/pi-rootfs/opt/nopeek/bin/nopeek-client-benchmark ]; then  # bash edge/pi_userland.sh build
      rm -rf ".cache/pi-rootfs/tmp/exports/${cut}_${defence}" && mkdir -p .cache/pi-rootfs/tmp/exports
      cp -r "$dir/export" ".cache/pi-rootfs/tmp/exports/${cut}_${defence}"
      bash edge/pi_userland.sh run .cache/pi-rootfs /opt/nopeek/bin/nopeek-client-benchmark \
        --export_dir="/tmp/exports/${cut}_${defence}" --runs=200 --warmup=20 > "$dir/benchmark_pi.txt" 2>&1 || true
    fi
    echo "== done $dir"
  done
done
python3 -m train.frontier --out_dir=docs/leakage/mobilenet_v2_frontier \
  --title="Fashion-MNIST 32x32, MobileNetV2 (alpha 0.35), 5 epochs" "$RUN_DIR"/*/
