#!/usr/bin/env bash
# One health check of the GPU path, for a maintainer on one GPU machine (issue 21).
#
#   bash scripts/gpu_check.sh             # about 8 minutes on one H100/H200; downloads nothing
#   bash scripts/gpu_check.sh --dry-run   # print every command it would run (no GPU needed)
#   bash scripts/gpu_check.sh --no-tests  # skip step 1 (the test suite)
#   bash scripts/gpu_check.sh --budget 540 --test-budget 240 --out DIR
#       # stop every step at the time left of 540 s and the suite after 240 s (the summary is
#       # always printed), and copy the summary and a tarball of the logs and metrics into DIR
#       # (for a leased machine's $OUT)
#
# 1. the whole test suite on the GPU (the default device there), in parallel with pytest-xdist
#    when it is installed, serially otherwise;
# 2. the main job on synthetic CIFAR-100-sized data (50,000 + 10,000 images, 100 classes, 32 px):
#    three resnet32x4 teachers for one epoch; a vgg8 student, --distill inter, two epochs under
#    CAMKD, one under AEKD, two with --compile; a group of four students (one per strategy) for
#    two epochs with --cuda_graphs capture (teachers one graph, each student's step its own);
#    with 2+ GPUs, a group of two under torchrun (NCCL; each student in its own DDP);
# 3. the benchmarks (benchmarks/bench_student.py, bench_teacher.py, bench_group.py, bench_data.py) on the GPU, and
#    benchmarks/compare_graphs.py (captured CUDA-graph steps against eager steps, a group's
#    included) with bf16 autocast and tolerance, then --deterministic --no-amp (bit for bit);
# 4. one summary: commit, device, PyTorch version, tests passed/failed, seconds per epoch of every
#    run (metrics.jsonl's epoch_time), the benchmark ratios, peak GPU memory, and a last line
#    "GPU PATH HEALTHY" or "GPU PATH BROKEN: <what>" (exit status 0 or 1).
#
# It uses the torch it finds (a GPU machine ships its own CUDA build) and installs nothing.
# Everything it writes goes to a fresh temporary folder (printed at the start and the end).
set -u -o pipefail

DRY=0
TESTS=1
BUDGET=0
TEST_BUDGET=0
OUTDIR=
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --no-tests) TESTS=0 ;;
        --budget)
            BUDGET=${2:-}
            case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget expects whole seconds, got '${2:-}'" >&2; exit 2 ;; esac
            shift ;;
        --test-budget)
            TEST_BUDGET=${2:-}
            case "$TEST_BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --test-budget expects whole seconds, got '${2:-}'" >&2; exit 2 ;; esac
            shift ;;
        --out)
            OUTDIR=${2:-}
            [ -n "$OUTDIR" ] || { echo "gpu_check.sh: --out expects a folder" >&2; exit 2; }
            shift ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (expected --dry-run, --no-tests, --budget S, --test-budget S, --out DIR or --help)" >&2
           exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then
    WORK=/tmp/mtkd-gpu-check.XXXXXX
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/mtkd-gpu-check.XXXXXX")
fi
SAVE=$WORK/save
LOGS=$WORK/logs
# deterministic-mode tests need cuBLAS's workspace setting before CUDA starts
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}

# pytest-xdist where installed: one worker per CPU core, at most 16 (one GPU is shared by all);
# without it, the project's addopts (-n auto) are replaced by none (-o addopts=). -rfE lists every
# failure and error at the end of the log
PYTEST=("$PY" -m pytest -q -rfE -p no:cacheprovider)
if "$PY" -c "import xdist" >/dev/null 2>&1; then
    WORKERS=$(nproc 2>/dev/null || echo 4)
    [ "$WORKERS" -gt 16 ] && WORKERS=16
    PYTEST+=(-n "$WORKERS")
else
    PYTEST+=(-o "addopts=-ra")
fi
# pytest-timeout where installed: a test that hangs on the GPU fails alone instead of eating the run
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
    PYTEST+=(--timeout 180)
fi

COMMON=(--dataset synthetic --save_dir "$SAVE" --quiet)
STUDENT=("$PY" train_student.py "${COMMON[@]}" --model_s vgg8 --teacher_num 3 --distill inter)
# name  command...
RUNS=(
    "teachers|$PY train_teacher.py ${COMMON[*]} --model resnet32x4 --epochs 1 --trials 0,1,2"
    "student_camkd|${STUDENT[*]} --ensemble_method CAMKD --epochs 2 --tag gpucheck-camkd"
    "student_aekd|${STUDENT[*]} --ensemble_method AEKD --epochs 1 --tag gpucheck-aekd"
    "student_compile|${STUDENT[*]} --ensemble_method CAMKD --epochs 2 --compile --tag gpucheck-compile"
    "student_group|${STUDENT[*]} --ensemble_method AVERAGE_LOSS,EBKD,AEKD,CAMKD --epochs 2 --cuda_graphs capture --tag gpucheck-group"
)
# a group under torchrun (issue 26 item 4): NCCL needs a GPU per process, so only with 2+ GPUs
DDP_GROUP=("$PY" -m torch.distributed.run --standalone --nproc_per_node 2 train_student.py "${COMMON[@]}" --model_s vgg8
           --teacher_num 3 --distill inter --ensemble_method AVERAGE_LOSS,CAMKD --epochs 1 --tag gpucheck-ddp-group)
BENCH_STUDENT=("$PY" benchmarks/bench_student.py --device cuda)
BENCH_DATA=("$PY" benchmarks/bench_data.py --device cuda --json)
BENCH_TEACHER=("$PY" benchmarks/bench_teacher.py --device cuda)
BENCH_GROUP=("$PY" benchmarks/bench_group.py --device cuda)
# whole-step CUDA graphs (issue 18; groups: issue 28 item 2): 20 captured against 20 eager steps from
# the same state, with tolerance under bf16 autocast, then bit for bit
COMPARE_GRAPHS=("$PY" benchmarks/compare_graphs.py)
COMPARE_GRAPHS_EXACT=("$PY" benchmarks/compare_graphs.py --deterministic --no-amp)

if [ "$DRY" = 1 ]; then
    echo "# gpu_check.sh --dry-run: the commands, in order (work folder: a fresh $WORK)"
    echo "export CUBLAS_WORKSPACE_CONFIG=$CUBLAS_WORKSPACE_CONFIG"
    [ "$TESTS" = 1 ] && echo "${PYTEST[*]}"
    for run in "${RUNS[@]}"; do echo "${run#*|}"; done
    echo "# with 2+ GPUs only:"
    echo "${DDP_GROUP[*]}"
    echo "${COMPARE_GRAPHS[*]}"
    echo "${COMPARE_GRAPHS_EXACT[*]}"
    echo "${BENCH_STUDENT[*]}"
    echo "${BENCH_TEACHER[*]}"
    echo "${BENCH_GROUP[*]}"
    echo "${BENCH_DATA[*]}"
    exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device is visible to $PY (torch.cuda.is_available() is False); this check needs" \
         "a GPU (bash scripts/gpu_check.sh --dry-run lists its commands)" >&2
    exit 2
fi
mkdir -p "$SAVE" "$LOGS"
echo "==> gpu_check.sh: work folder $WORK"
STARTED=$(date +%s)

# limited CMD...: CMD under `timeout` at the time left of --budget (keeping 30 s for the summary);
# with no budget, CMD as it is. A step with under 10 s left is skipped (exit 124, as if timed out).
limited() {
    if [ "$BUDGET" = 0 ]; then
        "$@"
        return
    fi
    local left=$(( BUDGET - 30 - ($(date +%s) - STARTED) ))
    if [ "$left" -lt 10 ]; then
        echo "gpu_check.sh: skipped, --budget $BUDGET spent: $*"
        return 124
    fi
    timeout -k 5 "$left" "$@"
}

# run NAME SCRIPT ARGS...: the script in-process, so its peak CUDA memory can be read at the end
run_script() {
    local name=$1
    shift
    local t0
    t0=$(date +%s)
    limited "$PY" - "$LOGS/$name.peak_mib" "$@" > "$LOGS/$name.log" 2>&1 <<'EOF'
import runpy, sys
import torch
out, script, *argv = sys.argv[1:]
sys.argv = [script, *argv]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    with open(out, "w") as f:
        f.write(f"{torch.cuda.max_memory_allocated() / 2**20:.0f}\n" if torch.cuda.is_available() else "?\n")
sys.exit(code)
EOF
    local code=$?
    echo "$code $(( $(date +%s) - t0 ))" > "$LOGS/$name.status"
    echo "    $name: exit $code, $(( $(date +%s) - t0 )) s (log: $LOGS/$name.log)"
}

if [ "$TESTS" = 1 ]; then
    echo "==> 1/3 the test suite: ${PYTEST[*]}"
    t0=$(date +%s)
    if [ "$TEST_BUDGET" != 0 ]; then
        limited timeout -k 5 "$TEST_BUDGET" "${PYTEST[@]}" > "$LOGS/pytest.log" 2>&1
    else
        limited "${PYTEST[@]}" > "$LOGS/pytest.log" 2>&1
    fi
    echo "$? $(( $(date +%s) - t0 ))" > "$LOGS/pytest.status"
    tail -n 1 "$LOGS/pytest.log"
fi

echo "==> 2/3 the main job on synthetic CIFAR-100-sized data"
for run in "${RUNS[@]}"; do
    name=${run%%|*}
    read -r -a cmd <<< "${run#*|}"
    echo "    ${cmd[*]}"
    run_script "$name" "${cmd[@]:1}"
done

bench() {   # bench NAME CMD...: a benchmark under the budget, its log and status in $LOGS
    local name=$1 t0
    shift
    t0=$(date +%s)
    limited "$@" > "$LOGS/$name.log" 2>&1
    echo "$? $(( $(date +%s) - t0 ))" > "$LOGS/$name.status"
    echo "    $name: exit $(cut -d' ' -f1 "$LOGS/$name.status"), $(( $(date +%s) - t0 )) s"
}
if [ "$("$PY" -c "import torch; print(torch.cuda.device_count())")" -ge 2 ]; then
    echo "    ${DDP_GROUP[*]}"
    bench ddp_group "${DDP_GROUP[@]}"
else
    echo "    ddp_group: skipped (one GPU; the two-node and group-under-torchrun tests run on the CPU in the suite)"
fi

echo "==> 3/3 compare_graphs.py and the benchmarks"
bench compare_graphs "${COMPARE_GRAPHS[@]}"
bench compare_graphs_exact "${COMPARE_GRAPHS_EXACT[@]}"
bench bench_student "${BENCH_STUDENT[@]}"
bench bench_teacher "${BENCH_TEACHER[@]}"
bench bench_group "${BENCH_GROUP[@]}"
bench bench_data "${BENCH_DATA[@]}"

"$PY" - "$WORK" "$TESTS" "$(( $(date +%s) - STARTED ))" > "$LOGS/summary.txt" <<'EOF'
import glob, json, os, re, subprocess, sys
import torch

work, tests, total = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
logs = os.path.join(work, "logs")
problems = []


def read(name):
    path = os.path.join(logs, name)
    return open(path).read() if os.path.exists(path) else ""


def status(name):
    text = read(f"{name}.status").split()
    return (int(text[0]), int(text[1])) if len(text) == 2 else (None, None)


commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                       text=True).stdout.strip()
print("\n================ gpu_check.sh summary ================")
print(f"commit   {commit or '?'}{' (with uncommitted changes)' if dirty else ''}")
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"device   {device}; torch {torch.__version__}, CUDA {torch.version.cuda}")

if tests:
    code, secs = status("pytest")
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", read("pytest.log").strip().splitlines()[-1]
                                                       if read("pytest.log").strip() else ""))
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    print(f"tests    {counts.get('passed', 0)} passed, {failed} failed, {counts.get('skipped', 0)} skipped "
          f"in {secs} s (exit {code})")
    if code != 0 or failed:
        problems.append(f"{failed} failing test(s) (see {logs}/pytest.log)")
else:
    print("tests    not run (--no-tests)")

print("runs     seconds per epoch (metrics.jsonl epoch_time), peak GPU memory:")
for name, pattern in (("teachers", "teachers/*"), ("student_camkd", "students/*gpucheck-camkd*"),
                      ("student_aekd", "students/*gpucheck-aekd*"), ("student_compile", "students/*gpucheck-compile*"),
                      ("student_group", "students/*gpucheck-group*"), ("ddp_group", "students/*gpucheck-ddp-group*")):
    code, secs = status(name)
    times = []
    for folder in sorted(glob.glob(os.path.join(work, "save", pattern))):
        path = os.path.join(folder, "metrics.jsonl")
        if os.path.exists(path):
            times.append([json.loads(line)["epoch_time"] for line in open(path) if line.strip()])
    epochs = "; ".join(", ".join(f"{t:.1f}" for t in run) for run in times) or "no epochs recorded"
    peak = read(f"{name}.peak_mib").strip() or "?"
    if name == "ddp_group" and code is None:
        print(f"  {name:16s} skipped (needs 2 GPUs)")
        continue
    print(f"  {name:16s} exit {code}, {secs} s in all; s/epoch: {epochs}; peak {peak} MiB")
    if code != 0 or not times:
        problems.append(f"{name} failed (see {logs}/{name}.log)")
# the captured group: the teachers' graph was captured and no student's capture failed
group_logs = "".join(open(p).read() for p in glob.glob(os.path.join(work, "save", "students", "*gpucheck-group*",
                                                                      "log.txt")))
captured = "the teachers' forward on the group's static batch is one graph" in group_logs
fell_back = "capture failed" in group_logs or "could not be captured" in group_logs
print(f"  group capture    teachers' graph {'captured' if captured else 'NOT captured'}; "
      f"{'a capture FAILED' if fell_back else 'no capture failed'}")
if group_logs and (not captured or fell_back):
    problems.append("the group's capture (see the gpucheck-group run folders' log.txt)")

code, _ = status("bench_student")
# method, cuda_graphs mode, ours img/s, reference img/s, ratio, ours MiB, reference MiB
rows = re.findall(r"^(\w+)\s+(off|static|capture|compile)\s+([\d.]+)\s+([\d.]+|nan)\s+([\d.]+|nan)\s+"
                  r"([\d.]+|nan)\s+([\d.]+|nan)\s*$", read("bench_student.log"), re.M)
print("bench    bench_student.py (method, --cuda_graphs, ours img/s, reference img/s, ratio, our peak MiB):")
for method, mode, ours, ref, ratio, om, _ in rows:
    print(f"  {method:14s} {mode:>8s} {ours:>8s} {ref:>8s} {ratio:>7s}x {om:>7s} MiB")
for mode, ratio in re.findall(r"ours \((\w+)\): AEKD step time / AVERAGE_LOSS step time = ([\d.]+)",
                              read("bench_student.log")):
    print(f"  AEKD / AVERAGE_LOSS step time ({mode}): {ratio}")
if code != 0 or not rows:
    problems.append(f"bench_student.py failed (see {logs}/bench_student.log)")
code, _ = status("bench_teacher")
rows = re.findall(r"^\s*(off|static|capture|compile)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$",
                  read("bench_teacher.log"), re.M)
print("bench    bench_teacher.py (--cuda_graphs, ours img/s, plain loop img/s, ratio, our peak MiB):")
for mode, ours, plain, ratio, om, _ in rows:
    print(f"  {mode:>8s} {ours:>8s} {plain:>8s} {ratio:>7s}x {om:>7s} MiB")
if code != 0 or not rows:
    problems.append(f"bench_teacher.py failed (see {logs}/bench_teacher.log)")
code, _ = status("bench_group")
ratios = re.findall(r"^group of \d+(?: \(\w+\))?: .*$", read("bench_group.log"), re.M)
print("bench    bench_group.py: " + ("\n         ".join(ratios) if ratios else "no result"))
if code != 0 or not ratios:
    problems.append(f"bench_group.py failed (see {logs}/bench_group.log)")
code, _ = status("bench_data")
data = [json.loads(line) for line in read("bench_data.log").splitlines() if line.startswith("{")]
if data:
    d = data[-1]
    print(f"  bench_data.py    device-resident {d['device_images_per_s']:.0f} img/s, DataLoader "
          f"{d['conventional_images_per_s']:.0f} img/s, ratio {d['ratio']:.2f}x")
if code != 0 or not data:
    problems.append(f"bench_data.py failed (see {logs}/bench_data.log)")
for name, how in (("compare_graphs", "bf16, tolerance"), ("compare_graphs_exact", "--deterministic --no-amp")):
    code, _ = status(name)
    print(f"graphs   compare_graphs.py ({how}): "
          + {0: "captured steps equal eager steps", 124: "timed out"}.get(code, "DIFFERENT"))
    for line in read(f"{name}.log").splitlines():
        if line.startswith(("ok ", "FAIL")):
            print(f"           {line}")
    if code != 0:
        problems.append(f"compare_graphs.py ({how}) failed (see {logs}/{name}.log)")
print(f"total    {total} s; logs and runs in {work}")
print("GPU PATH HEALTHY" if not problems else "GPU PATH BROKEN: " + "; ".join(problems))
sys.exit(1 if problems else 0)
EOF
CODE=$?
cat "$LOGS/summary.txt"
if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR"
    cp "$LOGS/summary.txt" "$OUTDIR/gpu_check_summary.txt"
    (cd "$WORK" && tar czf "$OUTDIR/gpu_check_logs.tgz" logs $(find save -name '*.jsonl' -o -name '*.log' -o -name args.json))
    echo "==> summary and logs copied to $OUTDIR"
fi
exit $CODE
