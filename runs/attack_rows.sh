#!/usr/bin/env bash
# The rows of docs/threat_model/results.md, one command each (as the table's command column says).
cd "$(dirname "$0")/.."
run() { python3 -m train.attack_benchmark "$@"; }
run --clients=undefended --attacks=fsha --defences=off
run --clients=undefended --attacks=substitute --defences=on
run --clients=undefended --attacks=label_inference --defences=off,on
run --clients=bounded --attacks=fsha,substitute,label_inference --defences=off,on
run --clients=nopeek3 --attacks=fsha,substitute,label_inference --defences=off,on
run --clients=nopeek1 --attacks=fsha,substitute,label_inference --defences=off,on
