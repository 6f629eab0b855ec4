#!/usr/bin/env bash
# One GPU check of longqa, one call, <= 8 minutes on one H100/H200; every stage time-boxed and
# written as it goes to $OUT (else benchmarks/results/gpu/), so a stage that dies leaves the others.
#
#   bash benchmarks/gpu_wheels.sh         # here (network): wheels for a machine without network
#   bash benchmarks/gpu_check.sh          # there: install, doctor, cuda tests, kernels, training
#   bash benchmarks/gpu_check.sh --dry-run   # CPU, tiny shapes, Triton interpreter (a test runs it)
#
# Stage time boxes (seconds, 475 in all): install 45, doctor 30, cuda tests 75, env 20, kernels 50,
# train 180, longest 75; then the report. Files: gpu_check.md (the joined table), gpu_check.log (every stage's output), env.md,
# kernels.md, train.md, train.jsonl, longest.md.
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
if [ $DRY = 1 ]; then
  OUT_DIR=${GPU_CHECK_OUT:-$(mktemp -d)}
  export TRITON_INTERPRET=1
  SCALE=10  # the time boxes are GPU seconds; the interpreter on a shared CPU is slower
else
  OUT_DIR=${OUT:-benchmarks/results/gpu}
  SCALE=1
fi
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
: >"$OUT_DIR/stages.tsv"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DRYFLAG=$([ $DRY = 1 ] && echo --dry-run || true)

stage() {  # stage NAME SECONDS COMMAND...: run with a time box, log, record status
  local name=$1 box=$(($2 * SCALE)) t0 rc
  shift 2
  t0=$(date +%s)
  echo "== $name (time box ${box}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$box" "$@" >>"$LOG" 2>&1
  rc=$?
  [ $rc = 124 ] && echo "$name: stopped by its ${box}s time box" | tee -a "$LOG"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$box" >>"$OUT_DIR/stages.tsv"
  return 0
}

install() {  # what the GPU machine lacks: carried wheels (.whl/), else the package index
  local missing=""
  for mod in bitsandbytes liger_kernel pydantic yaml typer rich peft transformers triton; do
    "$PY" -c "import $mod" 2>/dev/null || missing="$missing $mod"
  done
  echo "missing before install:${missing:- none}"
  if [ -z "$missing" ]; then
    :
  elif ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/longqa-site .whl/*.whl || echo "install: carried wheels failed to install"
  else
    "$PY" -m pip install -q bitsandbytes liger-kernel "pydantic>=2.6" pyyaml typer rich peft \
      || echo "install: no package index reachable and no .whl/ (run benchmarks/gpu_wheels.sh)"
  fi
  "$PY" -c "import flash_attn" 2>/dev/null \
    || echo "flash-attn: not installed (no prebuilt wheel for this torch/CUDA is carried); SDPA is used"
}

if [ $DRY = 0 ]; then
  export -f install
  export PY
  stage install 45 bash -c install
  [ -d /tmp/longqa-site ] && export PYTHONPATH="$PYTHONPATH:/tmp/longqa-site"
fi
stage doctor 30 "$PY" -m longqa doctor
CUDA_TESTS="tests/test_ops_rope_triton.py tests/test_ops_chunked_ce.py tests/test_ops_offload.py
  tests/test_ops_tiled_mlp_cuda.py"
if [ $DRY = 1 ]; then
  stage cuda-tests 75 "$PY" -m pytest -q -m cuda --collect-only $CUDA_TESTS
else
  stage cuda-tests 75 "$PY" -m pytest -q -m cuda -p no:cacheprovider $CUDA_TESTS
fi
stage env 20 "$PY" benchmarks/gpu_check.py env --out "$OUT_DIR" $DRYFLAG
stage kernels 50 "$PY" benchmarks/gpu_check.py kernels --out "$OUT_DIR" $DRYFLAG
stage train 180 "$PY" benchmarks/gpu_check.py train --out "$OUT_DIR" --budget 160 $DRYFLAG
stage longest 75 "$PY" benchmarks/gpu_check.py longest --out "$OUT_DIR" --budget 60 $DRYFLAG
"$PY" benchmarks/gpu_check.py report --out "$OUT_DIR" >/dev/null 2>>"$LOG"
echo "gpu_check: results in $OUT_DIR/gpu_check.md"
