#!/usr/bin/env bash
# The GPU path on a real accelerator (issue 12): one prepared run, <= 8 minutes on one H200.
#   1. installs the carried wheels (.whl/, from bench/gpu/wheels.sh) into a private site dir and
#      puts the workspace packages' src dirs on PYTHONPATH: the GPU machine has torch,
#      transformers, lightning, peft, safetensors, pyarrow and pytest, but no uv and no registry.
#      The packages register their checkpoint kinds and config schemas as entry points, which a
#      src dir does not carry: bench/gpu/env.py writes a minimal dist-info per workspace package
#      into the private site dir (and proves the registry complete from there);
#   2. runs the CUDA-marked tests (there a missing device is an error, not a skip);
#   3. times the teacher (SmolLM2-135M shape, random weights, bf16, prefix and sequence mode) and
#      the student's epoch, against the bf16 matmul peak measured in the same process.
# Everything is built from the working tree; the output also goes to $OUT/gpu_check.log when the
# device tool's $OUT is set.
#
#   bash bench/gpu/check.sh            on the GPU machine (the device tool's call carries ".whl");
#                                      bash bench/gpu_check.sh is the same
#   bash bench/gpu/check.sh --dry-run  on any CPU: checks the run above is complete (seconds):
#                                      files, wheels, Python compiles, the entry points from the
#                                      src dirs alone, the test selection, and the benchmark's
#                                      code at toy sizes
# PYTHON overrides the interpreter (GPU: python3; dry run: .venv/bin/python when present).
# GPU_CHECK_ALLOW_MISSING_WHEELS=1 lets a dry run pass before bench/gpu/wheels.sh has run (CI).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root: bench is run as a package from there (python -m)
export PYTHONUNBUFFERED=1

ROOT=$(pwd)  # absolute: the tests' subprocesses and Hydra runs read PYTHONPATH too
# the workspace packages the check imports (recdata runkit student-sasrec teacher-ilora distill
# compare: bench/gpu/env.py WORKSPACE, the one list), absolute
SRC=$ROOT/packages/recdata/src:$ROOT/packages/runkit/src:$ROOT/packages/student-sasrec/src:$ROOT/packages/teacher-ilora/src
SRC=$SRC:$ROOT/packages/distill/src:$ROOT/packages/compare/src
CUDA_TESTS=(packages/student-sasrec/tests/test_cuda.py packages/teacher-ilora/tests/test_cuda.py)
BENCH=bench.gpu.bench
WHEELS=.whl
SITE=${TMPDIR:-/tmp}/ilora-gpu-site
TESTS_TIMEOUT=300
BENCH_TIMEOUT=150
PY_FILES=(bench/__init__.py bench/gpu/__init__.py bench/gpu/env.py bench/gpu/bench.py bench/gpu/dry_run.py
          bench/speed/__init__.py bench/speed/teacher_steps.py)
FILES=(pyproject.toml uv.lock conftest.py conf/config.yaml bench/gpu/device_packages.txt "${PY_FILES[@]}"
       packages/*/pyproject.toml services/*/pyproject.toml
       packages/student-sasrec/tests/conftest.py packages/teacher-ilora/tests/conftest.py "${CUDA_TESTS[@]}"
       ${SRC//:/ })

step() { echo; echo "== $* ($(date +%T))"; }

dry_run() {
    local py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
    step "files the run uses"
    for f in "${FILES[@]}"; do [ -e "$f" ] || { echo "error: missing $f"; return 1; }; done
    echo "${#FILES[@]} present"
    [ "$SRC" = "$("$py" -m bench.gpu.env src)" ] || { echo "error: SRC is not bench/gpu/env.py's WORKSPACE"; return 1; }
    step "wheels"
    "$py" -m bench.gpu.env check "$WHEELS" ${GPU_CHECK_ALLOW_MISSING_WHEELS:+--allow-missing}
    step "Python compiles"
    "$py" -m compileall -q "${PY_FILES[@]}" "${CUDA_TESTS[@]}" ${SRC//:/ } && echo ok
    step "entry points from the src dirs alone (a dist-info shim, as the GPU run writes into its site dir)"
    local shim
    shim=$(mktemp -d)
    "$py" -m bench.gpu.env entry-points "$shim"
    "$py" -m bench.gpu.env registry "$shim" || { rm -rf "$shim"; return 1; }
    rm -rf "$shim"
    export PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}
    step "CUDA test selection, then the benchmark code at toy sizes (one process)"
    "$py" -m bench.gpu.dry_run "${CUDA_TESTS[@]}"
    echo
    echo "dry run passed: bash bench/gpu/check.sh is ready for a GPU (carry .whl)"
}

gpu_run() {
    local py=${PYTHON:-python3} failed=0
    step "device"
    nvidia-smi -L || true
    "$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
    step "wheels"
    "$py" -m bench.gpu.env check "$WHEELS"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    step "entry points (checkpoint kinds, config schemas) of the src dirs"
    "$py" -m bench.gpu.env entry-points "$SITE"
    "$py" -m bench.gpu.env registry "$SITE" || failed=1
    export PYTHONPATH=$SRC:$SITE
    step "CUDA tests (limit ${TESTS_TIMEOUT}s)"
    ILORA_REQUIRE_CUDA=1 timeout "$TESTS_TIMEOUT" "$py" -m pytest -q -rs -m cuda -p no:cacheprovider "${CUDA_TESTS[@]}" || failed=1
    step "speed (limit ${BENCH_TIMEOUT}s)"
    timeout "$BENCH_TIMEOUT" "$py" -m "$BENCH" || failed=1
    step "done: $([ $failed = 0 ] && echo 'tests passed, speed measured' || echo 'FAILED (see above)')"
    return $failed
}

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi
case "${1:-}" in
    --dry-run) dry_run ;;
    "") gpu_run ;;
    *) echo "usage: bash bench/gpu/check.sh [--dry-run]" >&2; exit 2 ;;
esac
