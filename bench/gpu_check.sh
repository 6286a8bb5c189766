#!/usr/bin/env bash
# Everything that needs a GPU, in one command (issue 12, part 2; bench/GPU.md).
#
#   bash bench/gpu_check.sh OUT_DIR          # on the GPU machine, <= 8 min
#   bash bench/gpu_check.sh --smoke OUT_DIR  # on CPU, ~1-1.5 min (tested)
#
# Installs the wheels carried in .whl/ (`make gpu-wheels`; the GPU image has
# jax[cuda], flax, optax, orbax, torch, torchvision, opencv) into a scratch
# folder, then runs, each step under its own timeout (they sum to 480 s) and
# all of them within GPU_CHECK_BUDGET_S (470 s; a step gets at most what is
# left):
#   parity       depthwise/backbone parity tests on the GPU (every depthwise
#                form; backbone vs torchvision; f32 at highest precision)
#   model_bench  backbone f32+bf16, every depthwise form, JAX vs torchvision
#                on the same card, batch 8 and 192 (= 24 clips x 8 frames)
#                at 380 px, with bytes moved and the fraction of the card's
#                memory bandwidth
#   train_bench  the full ASRID dyn_mix train step, 24 clips x 8 frames at
#                380 px, f32 and bf16, JAX vs the PyTorch twin
#   train_real   configs/dfdc_faces.py on the compact DFDC shards
#                (.gpu_data/, `make gpu-data`): frames/s and peak memory
#   mtcnn_cuda   MTCNN on cuda over the real sample videos (videos/s)
#   predict      predict's s/video on them
# Each step logs to OUT_DIR/<step>.log; results JSON land in OUT_DIR too.
# A failing step is recorded in OUT_DIR/summary.txt and the next one runs.
# --smoke (CPU) runs env, parity, model_bench, gpu_data and train_real tiny.
set -u
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
OUT="${1:?usage: bench/gpu_check.sh [--smoke] OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
DATA="${GPU_DATA:-.gpu_data/dfdc_faces_128}"
if [[ -z "${ASRID_REAL_SAMPLES:-}" && -d .gpu_data/real_samples/videos ]]; then
  export ASRID_REAL_SAMPLES="$PWD/.gpu_data/real_samples"
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"
T0=$SECONDS

step() {  # step NAME TIMEOUT_S CMD...: at most the budget that is left
  local name="$1" limit="$2"; shift 2
  local left=$((BUDGET_S - (SECONDS - T0)))
  if (( left < 10 )); then
    echo "skip  $name (time budget of ${BUDGET_S}s spent)" >> "$SUMMARY"
    return
  fi
  (( limit > left )) && limit=$left
  local t0=$SECONDS rc=0
  # SIGTERM at the limit (the trainer saves and stops on it), SIGKILL 10 s on.
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  if (( rc == 0 )); then
    echo "ok    $name $((SECONDS - t0))s" >> "$SUMMARY"
  else
    local why="rc $rc"
    (( rc == 124 || rc == 137 )) && why="timeout ${limit}s"
    echo "FAIL  $name $((SECONDS - t0))s ($why, see $name.log)" >> "$SUMMARY"
  fi
}

if [[ $SMOKE == 0 && -d .whl ]]; then
  # --no-deps: requirements-gpu.txt names every package the image lacks.
  step wheels 20 "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target "$SCRATCH/site" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$SCRATCH/site"
fi
step env 20 "$PY" -c "import jax, torch, grain, ml_collections, tensorboardX
import google_crc32c, facenet_pytorch
from tensorflow_datasets.proto import tf_example_pb2
print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__,
      'cuda', torch.cuda.is_available(), 'grain', grain.__version__)"
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

if [[ $SMOKE == 1 ]]; then
  # CPU: a tiny slice of every JAX step, so the script cannot rot. Timings
  # mean nothing here: compile with most optimisations off.
  export JAX_DISABLE_MOST_OPTIMIZATIONS=1
  step parity 120 "$PY" -m pytest -q -x tests/depthwise_test.py \
    -k "grad_match_grouped_conv and hw0 and 3-2-float32"
  step model_bench 120 "$PY" -m bench.model_bench --sizes 32 --batch 2 \
    --dtypes float32 --reps 1 --warmup 1 --asrid_frames 0 \
    --out "$OUT/model_bench.json"
  DATA="$SCRATCH/gpu_data"
  step gpu_data 60 "$PY" -m bench.make_gpu_data --synthetic --out "$DATA" \
    --train 32 --val 8 --size 64
  step train_real 150 "$PY" -m bench.train_report \
    --config=configs/dfdc_faces.py:runlocal,steps=3 \
    --workdir="$SCRATCH/train_real" --config.data.dir="$DATA" \
    --report="$OUT/train_real.json"
else
  # JAX takes 60% of the card, torch (same processes) the rest.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
  # JAX_PLATFORMS= lets the tests see the GPU (conftest defaults to cpu);
  # highest precision: parity, not TF32 rounding, is what is tested.
  # The 44 parity tests (-k) of the three files, not their CPU-side checks.
  step parity 55 env JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest \
    "$PY" -m pytest -q tests/depthwise_test.py tests/mobilenet_v3_test.py \
    tests/convert_test.py -k "match or parity or bfloat16"
  step model_bench_b8 45 "$PY" -m bench.model_bench --sizes 380 --batch 8 \
    --reps 10 --out "$OUT/model_bench_b8.json"
  step model_bench_b192 60 "$PY" -m bench.model_bench --sizes 380 \
    --batch 192 --reps 5 --asrid_frames 0 --out "$OUT/model_bench_b192.json"
  step train_bench 105 "$PY" -m bench.train_bench --sizes 380 \
    --variants dyn_mix --dtypes float32,bfloat16 --clips 24 --clip_len 8 \
    --processes 0 --steps 3 --rounds 2 --warmup 2 \
    --out "$OUT/train_bench.json"
  if [[ -f "$DATA/dataset_info.json" ]]; then
    # Stops itself (SIGTERM, checkpoint) 30 s after the first step; the
    # 16-core host runs 4 input workers (the config's 0 suits 2 cores).
    step train_real 90 "$PY" -m bench.train_report \
      --config=configs/dfdc_faces.py:steps=5000 \
      --workdir="$SCRATCH/train_real" --config.data.dir="$DATA" \
      --config.data.worker_count=4 --config.log_every=25 \
      --time_budget_s=30 --report="$OUT/train_real.json"
  else
    echo "FAIL  train_real 0s (no $DATA: run make gpu-data first)" >> "$SUMMARY"
  fi
  if [[ -n "${ASRID_REAL_SAMPLES:-}" ]]; then
    step mtcnn_cuda 45 "$PY" -m bench.preprocess_bench --device cuda \
      --repeats 1 --max_videos 1
    cp bench/results/preprocess_bench.json "$OUT/" 2>/dev/null
    step predict 40 "$PY" -m bench.predict_bench --device cuda
    cp bench/results/predict_bench.json "$OUT/" 2>/dev/null
  else
    echo "skip  mtcnn_cuda (no ASRID_REAL_SAMPLES, no .gpu_data/real_samples)" \
      >> "$SUMMARY"
  fi
fi
echo "total $((SECONDS - T0))s (budget ${BUDGET_S}s)" >> "$SUMMARY"
cat "$SUMMARY"
! grep -q '^FAIL' "$SUMMARY"
