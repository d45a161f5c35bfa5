#!/usr/bin/env bash
# Runs on the accelerator machine, in the repository root, after
# benches/gpu/pack's three parts reached /tmp/stash (parts 1 and 2 copied
# there by the first two calls; part 3 is .gpu/part3 of this call).
# Writes its figures under $OUT (or /tmp/out).
set -uo pipefail
out="${OUT:-/tmp/out}"
mkdir -p "$out" /tmp/models/onnxruntime
bash benches/gpu/setup-ort.sh /tmp/stash 2>&1 | tee "$out/setup.log"
. /tmp/ort/env.sh
for f in /tmp/stash/models/*.xz; do
  xz -dc "$f" > "/tmp/models/$(basename "$f" .xz)"
done
ln -sf /tmp/ort/libonnxruntime.so.1.31.1 /tmp/models/onnxruntime/libonnxruntime.so.1.31.1
export GENFLEET_MODELS_DIR=/tmp/models ORT_DYLIB_PATH=/tmp/ort/libonnxruntime.so.1.31.1
bin=.gpu/part3
chmod +x "$bin"/*
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
nproc | tee -a "$out/gpu.txt"

echo "== CUDA: engine vs bare session" | tee -a "$out/bench.md"
GENFLEET_BENCH_PROVIDER=cuda GENFLEET_BENCH_ROUNDS="${ROUNDS:-8}" \
  timeout 240 "$bin/inference-bench" 2>&1 | tee -a "$out/bench.md"

echo "== CPU (this machine's cores): engine vs bare session" | tee -a "$out/bench.md"
GENFLEET_BENCH_PROVIDER=cpu GENFLEET_BENCH_ROUNDS=3 GENFLEET_BENCH_BATCHES=1,8 \
  GENFLEET_BENCH_MODELS=u2netp,realesrgan-fast GENFLEET_BENCH_TILE=256 \
  timeout 120 "$bin/inference-bench" 2>&1 | tee -a "$out/bench.md"

# The whole image pipeline without services: genfleet batch cutting out
# corpus photos by the model, on CUDA and on the CPU. A process pays the
# runtime's start (CUDA context, cuDNN, the model load) once: a run over 6
# photos beside one over 480 separates it from the per-photo rate.
mkdir -p /tmp/photos /tmp/photos-small
cp tests/fixtures/corpus/photos/*.jpg /tmp/photos-small/
for i in $(seq 1 80); do
  for p in tests/fixtures/corpus/photos/*.jpg; do cp "$p" "/tmp/photos/$i-$(basename "$p")"; done
done
for provider in cuda cpu; do
  printf '[inference]\nexecution_providers = ["%s"]\nmax_batch = 16\n' "$provider" > /tmp/batch-$provider.toml
  for set in photos-small photos; do
    rm -rf /tmp/cut && mkdir -p /tmp/cut
    start=$(date +%s%N)
    timeout 150 "$bin/genfleet" --config /tmp/batch-$provider.toml batch /tmp/$set --out /tmp/cut \
      --remove-background --method model --models-dir /tmp/models > "$out/batch-$provider-$set.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    echo "batch --remove-background --method model, $provider, $set: rc $rc, $(ls /tmp/cut | wc -l) outputs, $(( (end - start) / 1000000 )) ms for $(ls /tmp/$set | wc -l) photos" | tee -a "$out/bench.md"
    tail -1 "$out/batch-$provider-$set.log"
  done
done
nvidia-smi --query-gpu=memory.used --format=csv | tee -a "$out/gpu.txt"
