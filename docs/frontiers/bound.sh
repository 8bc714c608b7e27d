#!/usr/bin/env bash
# The bound frontier (docs/leakage.md, "The bound frontier"): mnist_cnn on Fashion-MNIST (2 epochs, batch 128),
# bound_bits against accuracy at the dense cut (a 4-value tanh bottleneck, device noise for 6 to 16 bits) and
# at conv2 (a 2-channel tanh bottleneck: 14x14x2 = 392 values sent), every row attacked at the quick budget on
# the noisy activations as the device sends them.
# Usage: bash docs/frontiers/bound.sh [RUN_DIR]   (default runs/bound_frontier; about 8 minutes a row on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_CPP_MIN_LOG_LEVEL=2
RUN_DIR=${1:-runs/bound_frontier}
ROWS=(
  "dense_k4_8bits --cut=dense --bottleneck=4 --bounded --device_noise=0.26"
  "dense_k4_16bits --cut=dense --bottleneck=4 --bounded --device_noise=0.0626"
  "dense_k4_6bits --cut=dense --bottleneck=4 --bounded --device_noise=0.378"
  "conv2_k2_s1 --cut=conv2 --bottleneck=2 --bounded --device_noise=1"
  "conv2_k2_s3 --cut=conv2 --bottleneck=2 --bounded --device_noise=3"
  "dense_k4_12bits --cut=dense --bottleneck=4 --bounded --device_noise=0.126"
  "dense_undefended --cut=dense"
)
for row in "${ROWS[@]}"; do
  read -r name flags <<< "$row"
  dir="$RUN_DIR/$name"
  # shellcheck disable=SC2086
  [ -f "$dir/metrics.json" ] || python3 -m train.train --dataset=fashion_mnist --defence=plain --alpha=0 $flags \
    --model_dir="$dir"
  [ -f "$dir/leakage.json" ] || python3 -m train.leakage --model_dir="$dir" --quick
  echo "== done $dir"
done
python3 -m train.frontier --out_dir=docs/leakage/bound_frontier \
  --title="Fashion-MNIST, mnist_cnn, 2 epochs: the bound in bits" "$RUN_DIR"/*/
