#!/usr/bin/env bash
# One prepared check on the GPU machine (docs/design.md §6): build, GPU tests, quick benchmark.
#
#   FUSED_RESNET_COMMIT=$(git rev-parse HEAD) OUT=/some/dir bash benchmarks/device_check.sh
#
# Run from the repository root. Everything goes to $OUT; $OUT/summary.txt lists each step
# with its exit code. The script watches its own clock and stops within
# DEVICE_CHECK_LIMIT_S seconds (default 360): a step that would not fit is skipped, each
# step runs under `timeout`, and no step's failure aborts the others.
set -u

OUT=${OUT:-$PWD/device_check_out}
PY=${PYTHON:-python3}
LIMIT=${DEVICE_CHECK_LIMIT_S:-360}
DTYPE=${BENCH_DTYPE:-bf16}
BATCH=${BENCH_BATCH:-128}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
SECONDS=0
export PYTHONUNBUFFERED=1  # logs stay complete when a step is killed

log() { echo "[device_check ${SECONDS}s] $*" | tee -a "$OUT/device_check.log"; }
left() { echo $((LIMIT - SECONDS)); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# record NAME RC START: one line per step in the summary.
record() {
  local name=$1 rc=$2 start=$3 what
  case $rc in
    0) what=passed ;;
    124|137) what="timed out" ;;
    skip) what=skipped ;;
    *) what=failed ;;
  esac
  printf '%-14s %-10s rc=%-4s %4ss\n' "$name" "$what" "$rc" $((SECONDS - start)) >> "$SUMMARY"
  log "$name: $what (rc=$rc)"
}

# run_step NAME NEED_S WANT_S LOG CMD...: runs CMD under timeout min(WANT_S, time left - 10)
# unless fewer than NEED_S seconds are left.
run_step() {
  local name=$1 need=$2 want=$3 logf=$4 start=$SECONDS t rc
  shift 4
  t=$(min "$want" $(( $(left) - 10 )))
  if [ "$t" -lt "$need" ]; then
    echo "skipped: ${t}s left for it, needs ${need}s" > "$logf"
    record "$name" skip "$start"
    return
  fi
  log "$name (timeout ${t}s): $*"
  timeout -k 15 "$t" "$@" > "$logf" 2>&1
  rc=$?
  record "$name" "$rc" "$start"
  return $rc
}

card_name() {
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 \
    | grep -oE 'H100|H200|A100|B200|L40S|L4|A10G' | head -1
}

# ---------------------------------------------------------------------------- 1. versions
start=$SECONDS
{
  echo "commit: ${FUSED_RESNET_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  date -u +%FT%TZ
  "$PY" --version
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
  "$PY" -c 'import triton; print("triton", triton.__version__)'
  command -v nvcc && nvcc --version | tail -2
  nproc
  timeout 30 nvidia-smi
} > "$OUT/versions.txt" 2>&1
record versions 0 "$start"  # informational: a missing tool is in the file

# ---------------------------------------------------------------------------- 2. build
# The pip editable build is preferred; setup.py build_ext --inplace is the fallback.
export MAX_JOBS=16 FUSED_RESNET_CUDA_ARCHS=9.0
run_step build 60 $(min 200 $(( $(left) - 130 ))) "$OUT/build.log" \
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .
if [ $? -ne 0 ] && ! grep -q '^skipped' "$OUT/build.log"; then
  mv "$OUT/build.log" "$OUT/build_pip.log"
  run_step build_inplace 60 $(min 200 $(( $(left) - 130 ))) "$OUT/build.log" \
    "$PY" setup.py build_ext --inplace
fi
start=$SECONDS
timeout 120 "$PY" -c 'import torch, fused_resnet as f
for d in (torch.bfloat16, torch.float16, torch.float32):
    print(d, f.backend_status("cuda", d))' > "$OUT/backends.txt" 2>&1
record backends $? "$start"

# ---------------------------------------------------------------------------- 3. sanitizer
# The conv kernels through plain CUDA (no torch: seconds), then memcheck and racecheck.
harness() {
  local bin="$OUT/conv_harness"
  command -v nvcc > /dev/null || { echo "no nvcc on this machine"; return 3; }
  nvcc -std=c++20 -O2 -arch=sm_90 -Icsrc csrc/cuda/harness/conv_harness.cu -o "$bin" || return
  "$bin" || return
  command -v compute-sanitizer > /dev/null || { echo "no compute-sanitizer"; return 3; }
  compute-sanitizer --tool memcheck --error-exitcode 9 "$bin" || return
  compute-sanitizer --tool racecheck --error-exitcode 9 "$bin"
}
run_step sanitizer 20 $(min 80 $(( $(left) - 150 ))) "$OUT/sanitizer.log" harness

# ---------------------------------------------------------------------------- 4. GPU tests
# In groups, each under its own budget (seconds; never past what the benchmark needs):
# the Triton backend's GPU checks first (batch-128 stage blocks, fp32 without TF32, CUDA
# graph capture, a non-default stream and cuda:1, torch.compile, > 2^31 elements), then
# the Triton ops and blocks at ResNet shapes, the CUDA backend, and the rest. The summary
# gives each group's time and pytest's last line.
GPU_GROUPS=()
gpu_group() {  # NAME BUDGET_S PYTEST_ARGS...
  local name=$1 budget=$2 rc
  shift 2
  GPU_GROUPS+=("$name")
  run_step "$name" 20 $(min "$budget" $(( $(left) - 80 ))) "$OUT/pytest_$name.log" \
    "$PY" -m pytest -q -rs -p no:cacheprovider --durations=5 --maxfail=20 "$@"
  rc=$?
  [ $rc -eq 5 ] && echo "$name: no test collected (pytest rc 5)" >> "$SUMMARY"
}
gpu_group gpu_triton 150 -m gpu tests/test_gpu.py -k "test_triton_ or (past_2 and triton)"
gpu_group gpu_triton_ops 90 -m gpu tests/test_triton_ops.py tests/test_gpu.py \
  -k "test_triton_ops or (stage_blocks_against and triton)"
gpu_group gpu_cuda 90 -m gpu tests/test_conv_igemm.py tests/test_gpu.py -k "not triton"
gpu_group gpu_other 60 -m gpu tests --ignore=tests/test_gpu.py \
  --ignore=tests/test_triton_ops.py --ignore=tests/test_conv_igemm.py

# ---------------------------------------------------------------------------- 5. benchmark
# The benchmark stops starting rows at --budget-s and writes its outputs on SIGTERM too.
name="$(date -u +%F)_$(card_name || true)_${DTYPE}_b${BATCH}"
name=${name/__/_}
bench_t=$(( $(left) - 10 ))
run_step bench 60 "$bench_t" "$OUT/bench.log" \
  "$PY" benchmarks/bench_blocks.py --quick --dtype "$DTYPE" --batch "$BATCH" \
  --budget-s $(( bench_t - 50 )) --json "$OUT/$name.json" --csv "$OUT/$name.csv" \
  --plot "$OUT/$name.png"

# ---------------------------------------------------------------------------- 6. summary
{
  echo
  echo "total ${SECONDS}s of ${LIMIT}s; outputs in $OUT:"
  ls -1 "$OUT"
  echo
  echo "--- sanitizer"
  grep -E '^(FAIL|all ok|FAILED)|ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" 2>/dev/null
  echo "--- gpu tests (group, seconds, pytest's last line)"
  for g in "${GPU_GROUPS[@]}"; do
    printf '%-16s %5s  %s\n' "$g" "$(grep -E "^$g " "$SUMMARY" | awk '{print $NF}' | head -1)" \
      "$(tail -n 1 "$OUT/pytest_$g.log" 2>/dev/null)"
  done
  echo "--- backends"
  cat "$OUT/backends.txt" 2>/dev/null
  echo "--- benchmark (16-block ResNet-50 ms, network img/s)"
  sed -n '/^ResNet-50, 16 bottlenecks/,$p' "$OUT/bench.log" 2>/dev/null
  grep -E '^\[.*(failed|skipped)' "$OUT/bench.log" 2>/dev/null | head -40
} >> "$SUMMARY"
cat "$SUMMARY"
exit 0
