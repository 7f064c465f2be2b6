#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (issue 10): the CUDA tests on the real device, the
# GPU-only tests (tests/gpu), a compute-sanitizer pass and the GPU benchmark, in 500 s of steps (run
# it under a 600 s limit).
#
#   bash scripts/gpu_check.sh                 # everything
#   bash scripts/gpu_check.sh --no-bench      # also: --no-sanitizer, --no-tests, --budget SECONDS
#
# Needs: `python3` (or $PYTHON) with a CUDA build of torch, numba, numba-cuda, pytest (and
# pytest-benchmark); compute-sanitizer on PATH or in /usr/local/cuda*/bin (optional: skipped with
# a message if absent). Installs nothing and needs no network: fastdrop is imported from this
# checkout through a temporary PYTHONPATH shim (fastdrop/ -> ./fastdrop/*, fastdrop/kernels ->
# ./kernels, the mapping pyproject.toml's package-dir gives an install).
#
# Steps run one after another; each continues whatever happened before, prints its elapsed time
# and has a time limit; a step may use the time earlier steps left, but never the time reserved
# for the steps after it. The script exits non-zero if any step failed or timed out.
# Full logs: build/gpu-check/<stamp>/*.log; benchmark files: bench/results/<gpu>-<date>.{json,md,png}.
# With --out DIR (default: $OUT when set) logs and benchmark files are also copied to DIR, as one
# archive (the device tool returns at most 8 files). FASTDROP_COMMIT=<hash> names the commit in the
# benchmark report where .git does not travel with the tree.
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
BUDGET=500          # seconds for all steps (the device call's limit, 600 s, minus a margin)
RUN_TESTS=1 RUN_SAN=1 RUN_BENCH=1
COPY_TO="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-tests) RUN_TESTS=0 ;;
        --no-sanitizer) RUN_SAN=0 ;;
        --no-bench) RUN_BENCH=0 ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        --out) COPY_TO="${2:?--out needs a folder}"; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

T_START=$(date +%s)
DEADLINE=$((T_START + BUDGET))
STAMP="$(date +%Y%m%d-%H%M%S)"
LOGDIR="$REPO/build/gpu-check/$STAMP"
mkdir -p "$LOGDIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastdrop-gpu-check.XXXXXX")"
# ---- summary and packaging (at exit, whatever ends the script) ----------------------------------
NAMES=() CAPS=() STATUS=() ELAPSED=()
summary() {
    echo "=== summary (logs: $LOGDIR) ==="
    for i in "${!NAMES[@]}"; do
        printf '  %-18s %-40s %4ss\n' "${NAMES[$i]}" "${STATUS[$i]:-not run}" "${ELAPSED[$i]:-0}"
    done
    grep -h -E "^(FAILED|ERROR|XPASS)|(passed|failed|skipped|xfailed|error).* in [0-9.]+s" "$LOGDIR"/tests_*.log 2>/dev/null \
        | sed 's/^/  /' | head -40
    grep -h -E "ERROR SUMMARY|never launched|every kernel launched" "$LOGDIR"/*check.log 2>/dev/null | sed 's/^/  /'
    echo "  commit ${FASTDROP_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}," \
         "total $(($(date +%s) - T_START))s"
}

PACKAGED=0
snapshot() {  # every log and new benchmark file so far in one archive (after each step, and at exit:
              # a call killed at the device tool's limit still returns what the steps before found)
    summary > "$LOGDIR/summary.txt" 2>&1
    if [ -n "$COPY_TO" ]; then
        # The device tool returns at most 8 files: one archive of every log and new benchmark file,
        # plus the benchmark's .md and the summary in the clear.
        mkdir -p "$COPY_TO/gpu-check"
        find "$REPO/bench/results" -newermt "@$T_START" -type f -exec cp {} "$LOGDIR/" \; 2>/dev/null
        # (written aside, then renamed: a kill during the write leaves the previous archive whole)
        tar czf "$COPY_TO/gpu-check/gpu-check.tgz.part" -C "$LOGDIR" . &&
            mv -f "$COPY_TO/gpu-check/gpu-check.tgz.part" "$COPY_TO/gpu-check/gpu-check.tgz"
        find "$LOGDIR" -maxdepth 1 \( -name "*.md" -o -name summary.txt \) -exec cp {} "$COPY_TO/gpu-check/" \; 2>/dev/null
        [ "${1:-}" = quiet ] || echo "  logs and new benchmark files: $COPY_TO/gpu-check/gpu-check.tgz"
    fi
}
package() {  # at exit, however the script ends
    [ $PACKAGED = 1 ] && return
    PACKAGED=1
    snapshot
    rm -rf "$WORK"
}
STEP_PID= STEP_I=
interrupted() {  # TERM or INT while a step runs: stop it (SIGINT: pytest prints its summary), give
                 # it up to 8 s to write that, mark it, then exit (the EXIT trap packages)
    if [ -n "$STEP_PID" ]; then
        kill -INT "$STEP_PID" 2>/dev/null
        local t
        for t in 1 2 3 4 5 6 7 8; do kill -0 "$STEP_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL "$STEP_PID" 2>/dev/null
        STATUS[$STEP_I]="FAIL (interrupted: $1)"
    fi
    exit $2
}
trap package EXIT
# a step runs in the background and the script waits for it, so a TERM (the device tool's limit)
# is handled at once: the step is stopped, and the archive written, instead of after the step
trap 'interrupted TERM 143' TERM
trap 'interrupted INT 130' INT

# ---- import fastdrop from this checkout, installing nothing -------------------------------------
mkdir -p "$WORK/shim/fastdrop"
for f in "$REPO"/fastdrop/* ; do
    case "$(basename "$f")" in __pycache__) continue ;; esac
    ln -s "$f" "$WORK/shim/fastdrop/$(basename "$f")"
done
ln -s "$REPO/kernels" "$WORK/shim/fastdrop/kernels"
export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$REPO/build/numba-gpu-check}"  # CPU kernels, shared by the steps
unset NUMBA_ENABLE_CUDASIM                  # the real device, never the simulator
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0  # tiny test grids are on purpose
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
export PYTHONDONTWRITEBYTECODE=1

# ---- steps ---------------------------------------------------------------------------------------
# name, cap (s): the caps of later steps are reserved from the deadline
NAMES=() CAPS=()
add() { NAMES+=("$1"); CAPS+=("$2"); }
# (caps sum to 495 s <= BUDGET; time a step leaves unused goes to the steps after it. tests_gpu
# compiles every op for CPU and CUDA (compiled autograd ~3 s a case on a CPU): the largest cap.
# First H200 run (2026-12-04): info 16 s, tests_cuda 63, tests_gpu 133, graphs 15, memcheck 15,
# racecheck 5, synccheck 2, bench 53; the graph tests then only met refusals: since graph-safe
# masks they capture and replay every op, eager references included, and one torch.compile; the
# suites have grown since: 559 tests/cuda, 438 tests/gpu and 55 graph tests on 2026-12-07)
add info 30
[ $RUN_TESTS = 1 ] && { add tests_cuda 90; add tests_gpu 190; add tests_gpu_graphs 45; }
[ $RUN_SAN = 1 ] && { add memcheck 30; add racecheck 10; add synccheck 10; }
[ $RUN_BENCH = 1 ] && { add host_profile 25; add bench 65; } || true
# a --budget below the caps' sum scales every cap down (else the first steps got no time at all)
CAP_SUM=0; for c in "${CAPS[@]}"; do CAP_SUM=$((CAP_SUM + c)); done
if [ "$CAP_SUM" -gt "$BUDGET" ]; then
    for j in "${!CAPS[@]}"; do CAPS[$j]=$((CAPS[j] * BUDGET / CAP_SUM)); done
fi
STATUS=() ELAPSED=()
FAILED=0

reserved_after() {  # sum of the caps of the steps after index $1
    local s=0 j
    for ((j = $1 + 1; j < ${#CAPS[@]}; j++)); do s=$((s + CAPS[j])); done
    echo $s
}

step_limit() {  # the seconds step $1 may run if it starts now
    local limit=$((DEADLINE - $(date +%s) - $(reserved_after "$1")))
    [ $limit -gt $((CAPS[$1] * 3)) ] && limit=$((CAPS[$1] * 3))
    echo $limit
}

# run_step INDEX CMD...: runs with a limit, output to its log; prints the log's tail
run_step() {
    local i=$1; shift
    local name=${NAMES[$i]} now limit t0 rc
    now=$(date +%s)
    limit=$(step_limit "$i")
    echo
    echo "=== [$name] limit ${limit}s (at $((now - T_START))s) ==="
    if [ $limit -lt 5 ]; then
        STATUS[$i]="FAIL (no time left)"; ELAPSED[$i]=0; FAILED=1
        echo "=== [$name] not run: no time left"; return
    fi
    t0=$(date +%s)
    # SIGINT first: pytest then prints its summary of what ran; KILL 15 s later
    timeout -s INT -k 15 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1 </dev/null &
    STEP_PID=$! STEP_I=$i
    wait "$STEP_PID"
    rc=$?
    STEP_PID=
    ELAPSED[$i]=$(($(date +%s) - t0))
    tail -n "${TAIL_LINES:-30}" "$LOGDIR/$name.log"
    if [ $rc = 0 ]; then STATUS[$i]="ok"
    elif [ $rc = 3 ] && [ "${SAN_STEP:-0}" = 1 ]; then
        # launch_all_kernels.py exits 3 when it sees no device: compute-sanitizer cannot run on
        # this host (seen on gVisor hosts: "Device not supported"), which says nothing of fastdrop
        STATUS[$i]="skipped (compute-sanitizer unusable here, see log)"
    elif [ $rc = 124 ] || [ $rc = 137 ] || [ $rc = 130 ]; then STATUS[$i]="FAIL (timed out after ${limit}s)"; FAILED=1
    else STATUS[$i]="FAIL (exit $rc)"; FAILED=1
    fi
    echo "=== [$name] ${STATUS[$i]} in ${ELAPSED[$i]}s"
    snapshot quiet
}

skip_step() {
    local i=$1; shift
    STATUS[$i]="skipped: $*"; ELAPSED[$i]=0
    echo; echo "=== [${NAMES[$i]}] skipped: $*"
}

idx() { local j; for j in "${!NAMES[@]}"; do [ "${NAMES[$j]}" = "$1" ] && echo "$j"; done; }

# 0. numba-cuda 0.30 cannot compile a kernel under numpy >= 2.5 (np.row_stack removed; the H200
#    image of 2026-12 holds numpy 2.5): a numpy < 2.5 wheel carried in .whl/ (no network there) is
#    installed into a private folder put first on PYTHONPATH; without one, every step fails with
#    fastdrop's message saying so. To carry it: `bash scripts/gpu_wheels.sh` on a machine with
#    network, before the working tree goes to the GPU machine.
if ! "$PY" -c "import numpy, sys; sys.exit(0 if hasattr(numpy, 'row_stack') else 3)"; then
    CPTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    WHEEL="$(ls "$REPO"/.whl/numpy-2.[0-4].*-"$CPTAG"-*.whl 2>/dev/null | head -n 1)"
    if [ -n "$WHEEL" ]; then
        echo "numpy has no row_stack (numba-cuda 0.30 needs it): installing $(basename "$WHEEL") into $WORK/site"
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEEL"; then
            export PYTHONPATH="$WORK/site:$PYTHONPATH"
        else
            echo "WARNING: installing $(basename "$WHEEL") failed: every CUDA step will fail on numpy's row_stack"
        fi
    else
        # no wheel: numpy's own vstack under the removed name, put on numpy at every interpreter's
        # start by a sitecustomize (all numba-cuda 0.30 needs is the attribute to register its
        # overload; an image's own sitecustomize, if any, is shadowed for these steps)
        echo "WARNING: numpy $("$PY" -c 'import numpy; print(numpy.__version__)') has no row_stack: numba-cuda 0.30" \
             "cannot compile kernels with it, and .whl/ holds no numpy<2.5 wheel for $CPTAG" \
             "($(ls "$REPO"/.whl 2>/dev/null | tr '\n' ' ')): np.row_stack set to np.vstack by a sitecustomize" \
             "(to carry the wheel instead: PYTHON_VERSION=<this python> bash scripts/gpu_wheels.sh, carry: [\".whl\"])"
        mkdir -p "$WORK/rowstack"
        printf '%s\n' "import numpy" "if not hasattr(numpy, 'row_stack'):" "    numpy.row_stack = numpy.vstack" \
            > "$WORK/rowstack/sitecustomize.py"
        export PYTHONPATH="$WORK/rowstack:$PYTHONPATH"
    fi
fi

# 1. the machine and the versions; a tiny Numba kernel proves NVVM and the driver work, and one
#    launch on torch's stream proves the interop path
cat >"$WORK/info.py" <<'EOF'
import importlib.metadata as md, os, platform, subprocess, sys, time
t0 = time.perf_counter()
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"
print("python", platform.python_version(), sys.executable)
try:
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip())
except Exception as e:
    print("nvidia-smi:", type(e).__name__, e)
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("torch device 0:", p.name, f"cc {p.major}.{p.minor}", f"{p.total_memory / 2**30:.1f} GiB",
          f"{p.multi_processor_count} SMs", "devices:", torch.cuda.device_count())
print("numba", v("numba"), "numba-cuda", v("numba-cuda"), "cuda-bindings", v("cuda-bindings"),
      "cuda-python", v("cuda-python"), "pytest", v("pytest"), "pytest-benchmark", v("pytest-benchmark"),
      "matplotlib", v("matplotlib"), "triton", v("triton"))
print("CUDA_HOME", os.environ.get("CUDA_HOME"), "NUMBA_CACHE_DIR", os.environ.get("NUMBA_CACHE_DIR"))
import numpy as np
from numba import cuda
print("numba.cuda available:", cuda.is_available())
import fastdrop, fastdrop.kernels
print("fastdrop", fastdrop.__version__, "from", os.path.dirname(fastdrop.__file__),
      "kernels from", os.path.realpath(os.path.dirname(fastdrop.kernels.__file__)))
assert os.path.realpath(os.path.dirname(fastdrop.kernels.__file__)) == os.path.realpath(sys.argv[1] + "/kernels"), \
    "fastdrop.kernels is not this checkout's kernels/"
dev = cuda.get_current_device()
print("numba device:", dev.name, "cc", dev.compute_capability)
try:
    from numba.cuda.cudadrv import nvvm
    print("NVVM", nvvm.NVVM().get_version())
except Exception as e:
    print("NVVM version unknown:", type(e).__name__, e)
@cuda.jit
def twice(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] *= 2
a = cuda.to_device(np.arange(5, dtype=np.float32))
twice[1, 32](a)
assert (a.copy_to_host() == 2 * np.arange(5)).all()
print("numba kernel compile + launch: ok")
x = torch.ones(1000, device="cuda")
y = fastdrop.dropout(x, 0.5, seed=1)
torch.cuda.synchronize()
ref = fastdrop.dropout(torch.ones(1000), 0.5, seed=1)
assert torch.equal(y.cpu(), ref), "torch CUDA dropout differs from CPU"
print("fastdrop.dropout on a torch CUDA tensor equals the CPU result: ok")
print(f"info done in {time.perf_counter() - t0:.1f} s")
EOF
I=$(idx info)
run_step "$I" "$PY" "$WORK/info.py" "$REPO"
if [ "${STATUS[$I]}" != ok ] && [ -z "${CUDA_HOME:-}" ] && grep -qi "nvvm" "$LOGDIR/info.log"; then
    # numba-cuda without its [cu12]/[cu13] extra finds NVVM only through a toolkit
    for d in /usr/local/cuda /usr/local/cuda-*; do
        if [ -d "$d/nvvm" ]; then
            echo "retrying with CUDA_HOME=$d (NVVM from the toolkit)"
            mv "$LOGDIR/info.log" "$LOGDIR/info-1.log"
            export CUDA_HOME="$d"
            FAILED=0
            run_step "$I" "$PY" "$WORK/info.py" "$REPO"
            [ "${STATUS[$I]}" = ok ] || { unset CUDA_HOME; echo "CUDA_HOME did not help: unset again"; }
            break
        fi
    done
fi

# 2. the CUDA tests on the device (the simulator run's tests, now real), then tests/gpu
if [ $RUN_TESTS = 1 ]; then
    # pytest through a runner that drops the working directory from sys.path: `python -m pytest`
    # puts the repo root first, where ./fastdrop (without kernels/, which only an install or the
    # shim maps into it) would shadow the shim (every test then failed to import fastdrop.kernels)
    PYTEST=("$PY" -c 'import sys; sys.path[:] = [p for p in sys.path if p not in ("", ".")]; import pytest; sys.exit(pytest.main(sys.argv[1:]))'
            -q --durations=8 -p no:cacheprovider)
    # The PTX compile tests compile every kernel twice more for sm_80/sm_90 (16-20 s): the launches
    # here compile them for the real device already (GPU_CHECK_NVVM_TEST=1 keeps them).
    IGNORE=()
    [ "${GPU_CHECK_NVVM_TEST:-0}" = 1 ] || IGNORE=(--ignore=tests/cuda/test_nvvm_compile.py)
    # (one -r option: pytest keeps only the last one given)
    run_step "$(idx tests_cuda)" "${PYTEST[@]}" -rfEX tests/cuda "${IGNORE[@]}"
    run_step "$(idx tests_gpu)" "${PYTEST[@]}" -rfEXs tests/gpu --ignore=tests/gpu/test_cuda_graphs.py
    # own process: a failed capture can leave the CUDA context unusable for later tests
    run_step "$(idx tests_gpu_graphs)" "${PYTEST[@]}" -rfEXxs tests/gpu/test_cuda_graphs.py
fi

# 3. compute-sanitizer: memcheck over every kernel (torch route included), racecheck and
#    synccheck over the shared-memory kernels
if [ $RUN_SAN = 1 ]; then
    SAN="$(command -v compute-sanitizer || true)"
    if [ -z "$SAN" ]; then
        for d in /usr/local/cuda/bin /usr/local/cuda*/bin /opt/cuda/bin; do
            [ -x "$d/compute-sanitizer" ] && { SAN="$d/compute-sanitizer"; break; }
        done
    fi
    if [ -z "$SAN" ]; then
        msg="compute-sanitizer not found (PATH, /usr/local/cuda*/bin, /opt/cuda/bin)"
        for s in memcheck racecheck synccheck; do skip_step "$(idx $s)" "$msg"; done
    else
        echo; echo "compute-sanitizer: $SAN"
        KERNELS="tests/gpu/launch_all_kernels.py"
        export SAN_STEP=1
        # no caching allocator: memcheck sees torch's buffers at their real sizes
        run_step "$(idx memcheck)" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck \
            --error-exitcode 1 --print-limit 20 "$PY" "$KERNELS"
        run_step "$(idx racecheck)" "$SAN" --tool racecheck --error-exitcode 1 --print-limit 20 \
            "$PY" "$KERNELS" --shared-only
        run_step "$(idx synccheck)" "$SAN" --tool synccheck --error-exitcode 1 --print-limit 20 \
            "$PY" "$KERNELS" --shared-only
        unset SAN_STEP
    fi
fi

# 4. where the host time of a call goes (the first H200 run: the host path, not the kernels, set
#    the time of every small and mid-sized call), then the GPU benchmark: it stops starting rows
#    when its budget is spent (files still written)
if [ $RUN_BENCH = 1 ]; then
    if [ -f bench/gpu_host_profile.py ]; then
        HP=$(idx host_profile); hp_budget=$(($(step_limit "$HP") - 12)); [ $hp_budget -lt 5 ] && hp_budget=5
        TAIL_LINES=40 run_step "$HP" "$PY" bench/gpu_host_profile.py --out "$LOGDIR" --budget-s "$hp_budget"
    else
        skip_step "$(idx host_profile)" "bench/gpu_host_profile.py not in this checkout"
    fi
    I=$(idx bench)
    # the benchmark stops starting rows at its budget and writes its files; it gets its step's
    # limit less the time to write them (the step is killed at the limit)
    left=$(($(step_limit "$I") - 25))
    [ $left -lt 10 ] && left=10
    TAIL_LINES=70 run_step "$I" "$PY" bench/gpu_bench.py --budget-s "$left"
fi


echo
summary
[ $FAILED = 0 ] && { echo "  ALL STEPS OK"; exit 0; }
echo "  SOME STEPS FAILED"
exit 1
