#!/usr/bin/env bash
# Everything that needs a GPU, in one command (issue 12, part 2).
#
#   bash bench/gpu_check.sh OUT_DIR          # on the GPU machine, <= 8 min
#   bash bench/gpu_check.sh --smoke OUT_DIR  # on CPU, ~1 min (tested)
#
# Installs the wheels carried in .whl/ (`make gpu-wheels`; the GPU image has
# jax[cuda], flax, optax, orbax, torch, torchvision, opencv), then runs the
# depthwise/backbone parity tests, model_bench (every depthwise form, f32 and
# bf16, batch 8 and 192 = 24 clips x 8 frames at 380 px) and train_bench,
# MTCNN and predict on the real samples when $ASRID_REAL_SAMPLES is set.
# Each step logs to OUT_DIR/<step>.log; results JSON land in OUT_DIR too.
# A failing step is recorded in OUT_DIR/summary.txt and the next one runs.
set -u
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
OUT="${1:?usage: bench/gpu_check.sh [--smoke] OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME TIMEOUT_S CMD...
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    echo "ok    $name $((SECONDS - t0))s" >> "$SUMMARY"
  else
    echo "FAIL  $name $((SECONDS - t0))s (rc $?, see $name.log)" >> "$SUMMARY"
  fi
}

if [[ $SMOKE == 0 && -d .whl ]]; then
  step wheels 120 "$PY" -m pip install -q --no-index --find-links .whl \
    -r requirements-gpu.txt
fi
step env 30 "$PY" -c "import jax, torch; print(jax.__version__, jax.devices(),
  torch.__version__, torch.cuda.is_available())"
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

if [[ $SMOKE == 1 ]]; then
  # CPU: a tiny slice of every step, so the script cannot rot.
  step parity 120 "$PY" -m pytest -q -x tests/depthwise_test.py \
    -k "grad_match_grouped_conv and hw0 and 3-2-float32"
  step model_bench 120 "$PY" -m bench.model_bench --sizes 32 --batch 2 \
    --dtypes float32 --reps 1 --warmup 1 --asrid_frames 0 \
    --out "$OUT/model_bench.json"
else
  # JAX_PLATFORMS= lets the tests see the GPU (conftest defaults to cpu).
  step parity 240 env JAX_PLATFORMS=cuda "$PY" -m pytest -q \
    tests/depthwise_test.py tests/mobilenet_v3_test.py tests/convert_test.py
  step model_bench_b8 150 "$PY" -m bench.model_bench --sizes 380,224 \
    --batch 8 --reps 10 --out "$OUT/model_bench_b8.json"
  step model_bench_b192 150 "$PY" -m bench.model_bench --sizes 380 \
    --batch 192 --reps 5 --asrid_frames 0 --out "$OUT/model_bench_b192.json"
  step train_bench 150 "$PY" -m bench.train_bench --sizes 380 \
    --variants dyn_mix --steps 10
  cp bench/results/train_bench.json "$OUT/" 2>/dev/null
  if [[ -n "${ASRID_REAL_SAMPLES:-}" ]]; then
    step mtcnn_cuda 90 "$PY" -m bench.preprocess_bench --device cuda
    cp bench/results/preprocess_bench.json "$OUT/" 2>/dev/null
    step predict 90 "$PY" -m bench.predict_bench --device cuda
  fi
fi
cat "$SUMMARY"
! grep -q '^FAIL' "$SUMMARY"
