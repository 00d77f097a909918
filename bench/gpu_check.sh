#!/usr/bin/env bash
# GPU check for a lent H100/H200 (torch with CUDA and nvcc present, no internet), within a time
# budget (default 480 s = 8 minutes), in priority order:
#   build          TRANSFUSION_CUDA_ARCH=90 pip install --no-build-isolation --no-deps -e .  (sm_90)
#   tests          the CUDA tests (tests/ops and tests/test_extension.py, -k cuda) and the training
#                  loop's loss checks on the GPU (tests/train/test_train_loss_checks.py)
#   train          ResNet50, 224 px, amp=bf16 + channels_last, batch 64, synthetic fundus images:
#                  images/s from metrics.jsonl (transfusion train, the real CLI)
#   bench-svcca    Gram pass vs cuBLAS torch.mm, svcca vs plain torch and the floor, many pairs batched
#                  vs one pass each, batched eigh of all pairs (bench/bench_svcca.py -k cuda; issue 16)
#   bench-cbr      CBR fused vs eager vs torch.compile(eager) (bench/bench_cbr.py -k cuda)
#   bench-train    train-step images/s of CBR-Small and ResNet50 at batch 8 (bench/bench_train.py)
# Each step runs under `timeout` with at most its own cap and what is left of the budget; a step
# that cannot get its minimum is skipped and said so. Results: $OUT/results.md (a table, also
# printed), logs and benchmark JSON beside it. OUT: --out, else $OUT, else ./gpu_check_out.
# Needs, already installed (no internet): torch with CUDA, nvcc, scikit-build-core, pybind11,
# cmake, ninja, pytest, pytest-benchmark, and the package's runtime dependencies.
# GPU_CHECK_ALLOW_CPU=1 lets the steps start without a GPU: for tests/test_gpu_check_script.py only.
set -uo pipefail

STEPS=(build tests train bench-svcca bench-cbr bench-train)
# cap (max seconds) and minimum (skip below it) per step, same order as STEPS
CAPS=(210 75 90 60 150 45)
MINS=(60 20 40 20 45 15)

usage() {
  cat <<EOF
usage: bench/gpu_check.sh [options]
  --out DIR          where results go (default: \$OUT, else ./gpu_check_out)
  --budget SECONDS   total time budget (default 480)
  --only LIST        run only these steps (comma-separated)
  --skip LIST        skip these steps (comma-separated)
  --python PY        the Python with torch (default: \$PYTHON, else python)
  --train-steps N    ResNet50 training steps (default 60)
  --dry-run          print the steps and their commands; run nothing, write nothing
  -h, --help         this text
steps, in order: ${STEPS[*]}
EOF
}

die() { echo "gpu_check: $*" >&2; exit 2; }

OUT_DIR="${OUT:-./gpu_check_out}"
BUDGET=480
ONLY=""
SKIP=""
PY="${PYTHON:-python}"
TRAIN_STEPS=60
DRY=0
ALLOW_CPU="${GPU_CHECK_ALLOW_CPU:-0}"

is_step() { local s; for s in "${STEPS[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }
check_list() {  # option name, comma-separated list
  local item
  IFS=',' read -ra _items <<< "$2"
  [[ ${#_items[@]} -gt 0 ]] || die "$1 needs a comma-separated list of steps: ${STEPS[*]}"
  for item in "${_items[@]}"; do
    is_step "$item" || die "$1: unknown step '$item'; the steps are: ${STEPS[*]}"
  done
}
need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) need_value "$@"; OUT_DIR="$2"; shift 2 ;;
    --budget) need_value "$@"; BUDGET="$2"; shift 2
      [[ "$BUDGET" =~ ^[0-9]+$ && "$BUDGET" -gt 0 ]] || die "--budget must be a whole number of seconds > 0, got '$BUDGET'" ;;
    --only) need_value "$@"; ONLY="$2"; check_list --only "$2"; shift 2 ;;
    --skip) need_value "$@"; SKIP="$2"; check_list --skip "$2"; shift 2 ;;
    --python) need_value "$@"; PY="$2"; shift 2 ;;
    --train-steps) need_value "$@"; TRAIN_STEPS="$2"; shift 2
      [[ "$TRAIN_STEPS" =~ ^[0-9]+$ && "$TRAIN_STEPS" -ge 20 ]] || die "--train-steps must be a whole number >= 20, got '$TRAIN_STEPS'" ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done

selected() {
  [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]] && [[ ",$SKIP," != *",$1,"* ]]
}

OUT_DIR=$(realpath -m -s -- "$OUT_DIR")  # relative to where the script was started, not the repo
[[ "$PY" == */* ]] && PY=$(realpath -m -s -- "$PY")  # -s: a venv's python is a symlink
cd "$(dirname "$0")/.." || die "cannot enter the repository root"
ROOT=$(pwd)
SUMMARY="$PY bench/gpu_check_summary.py"
LOGS="$OUT_DIR/logs"
TRAIN_RUNS="$OUT_DIR/train_runs"
PYTEST="$PY -m pytest -p no:cacheprovider -q -rs"

# The steps' commands (bash -c strings: what --dry-run prints is what runs).
cmd_build="TRANSFUSION_CUDA_ARCH=90 CMAKE_BUILD_PARALLEL_LEVEL=\$(nproc) $PY -m pip install --no-build-isolation --no-deps --no-index -e . && $SUMMARY build"
cmd_tests="$PYTEST tests/ops tests/test_extension.py tests/train/test_train_loss_checks.py -k 'cuda or test_train_loss_checks'"
cmd_train="rm -rf $TRAIN_RUNS && TRANSFUSION_CACHE=$OUT_DIR/cache TRANSFUSION_TENSORBOARD=0 $PY -m transfusion.cli train --model resnet50 --dataset eyepacs --data-root synthetic --synthetic-images 768 --image-size 224 --batch-size 64 --steps $TRAIN_STEPS --set amp=bf16 --set channels_last=true --set log_every=10 --set eval_every=100000 --set checkpoint_every=100000 --workers 12 --device cuda --runs-dir $TRAIN_RUNS"
cmd_bench_svcca="$PYTEST bench/bench_svcca.py -k cuda --benchmark-only --benchmark-json=$OUT_DIR/bench_svcca.json -s"
cmd_bench_cbr="$PYTEST bench/bench_cbr.py -k cuda --benchmark-only --benchmark-group-by=group --benchmark-json=$OUT_DIR/bench_cbr.json && $PY bench/cbr_ratios.py $OUT_DIR/bench_cbr.json > $OUT_DIR/cbr_ratios.md"
cmd_bench_train="$PYTEST bench/bench_train.py -k cuda --benchmark-only --benchmark-json=$OUT_DIR/bench_train.json -s"

command_of() {
  case "$1" in
    build) echo "$cmd_build" ;;
    tests) echo "$cmd_tests" ;;
    train) echo "$cmd_train" ;;
    bench-svcca) echo "$cmd_bench_svcca" ;;
    bench-cbr) echo "$cmd_bench_cbr" ;;
    bench-train) echo "$cmd_bench_train" ;;
  esac
}

# What goes in the table's result column once a step has run.
result_of() {
  case "$1" in
    build) tail -n 1 "$LOGS/build.log" ;;
    tests) $SUMMARY pytest "$LOGS/tests.log" ;;
    train) $SUMMARY train "$(ls "$TRAIN_RUNS"/*/metrics.jsonl 2>/dev/null | head -n 1)" ;;
    bench-svcca) $SUMMARY svcca "$OUT_DIR/bench_svcca.json" ;;
    bench-cbr) $SUMMARY cbr "$OUT_DIR/bench_cbr.json" ;;
    bench-train) grep -E "images/s" "$LOGS/bench-train.log" | tr '\n' ';' | grep . || $SUMMARY pytest "$LOGS/bench-train.log" ;;
  esac
}

if [[ $DRY -eq 1 ]]; then
  echo "gpu_check: dry run (budget ${BUDGET}s, results would go to $OUT_DIR/results.md)"
  for i in "${!STEPS[@]}"; do
    s=${STEPS[$i]}
    selected "$s" || continue
    echo "[$s] (at most ${CAPS[$i]}s, skipped below ${MINS[$i]}s left) $(command_of "$s")"
  done
  exit 0
fi

# ---- preflight: a CUDA torch, before writing anything ------------------------------------------
if ! cuda_line=$($PY -c "import torch, sys
if not torch.cuda.is_available() and '$ALLOW_CPU' == '1':
    print(f'NO GPU (GPU_CHECK_ALLOW_CPU=1); torch {torch.__version__}'); sys.exit(0)
if not torch.cuda.is_available():
    sys.exit(f'no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda})')
p = torch.cuda.get_device_properties(0)
print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, sm {p.major}{p.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}')" 2>&1); then
  echo "gpu_check: ${cuda_line##*$'\n'}: this script is for a GPU machine (--dry-run shows its steps)" >&2
  exit 3
fi

mkdir -p "$LOGS" || die "cannot create $LOGS"
TSV="$OUT_DIR/steps.tsv"
: > "$TSV"
START=$SECONDS
echo "gpu_check: $cuda_line; budget ${BUDGET}s; results in $OUT_DIR"

for i in "${!STEPS[@]}"; do
  s=${STEPS[$i]}
  selected "$s" || continue
  left=$(( BUDGET - (SECONDS - START) ))
  if (( left < MINS[i] )); then
    printf '%s\tskipped\t0\tbudget: %ss left, needs %ss\n' "$s" "$left" "${MINS[$i]}" >> "$TSV"
    echo "gpu_check: [$s] skipped: ${left}s of the budget left, needs ${MINS[$i]}s"
    continue
  fi
  limit=$(( CAPS[i] < left ? CAPS[i] : left ))
  echo "gpu_check: [$s] (at most ${limit}s) $(command_of "$s")"
  t0=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$(command_of "$s")" > "$LOGS/$s.log" 2>&1
  rc=$?
  took=$(( SECONDS - t0 ))
  case $rc in
    0) status=ok ;;
    124|137) status="timeout (${limit}s)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  result=$(result_of "$s" 2>&1 | tail -n 1 | tr '\t' ' ')
  [[ $rc -ne 0 ]] && result="$result; log: $LOGS/$s.log: $(grep -v '^\s*$' "$LOGS/$s.log" | tail -n 1 | cut -c1-200 | tr '\t' ' ')"
  printf '%s\t%s\t%s\t%s\n' "$s" "$status" "$took" "$result" >> "$TSV"
  echo "gpu_check: [$s] $status in ${took}s: $result"
done

{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Device: $cuda_line. Commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown). Budget ${BUDGET}s, used $(( SECONDS - START ))s."
  echo
  $SUMMARY table "$TSV"
} > "$OUT_DIR/results.md"
cat "$OUT_DIR/results.md"
grep -qE $'\t(FAILED|timeout)' "$TSV" && exit 1
exit 0
