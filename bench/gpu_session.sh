#!/usr/bin/env bash
# Issue 17 in one run on a lent GPU machine (bench/gpu-session.md says how to call it).
#
#   bash bench/gpu_session.sh                 # on the GPU machine, results under $OUT
#   bash bench/gpu_session.sh --only tests,speed-baseline --budget 200   # a rerun
#   bash bench/gpu_session.sh --smoke         # here, on CPU, tiny sizes: proves the plumbing
#
# Steps, in priority order, each under its own `timeout` and all within --budget seconds
# (a step starts only if at least 20 s are left, and gets what is left if that is less
# than its own limit): env, tests, speed-baseline, speed-widefield, confocal,
# quality-baseline, quality-confocal, stable-cost, stable-quality-widefield,
# stable-quality-confocal, stable-quality-more. Each writes its JSON
# while it runs, so a step cut by its timeout leaves what it measured. What comes back
# ($OUT, at most 8 files): session.log (everything printed), results.tar (every step's
# JSON, logs and steps.jsonl; repacked every 20 s and after each step) and summary.md
# (bench/gpu_summary.py on those results).
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0 only="" budget=${GPU_SESSION_BUDGET:-500}
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1 ;;
        --only) only=$2; shift ;;
        --budget) budget=$2; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
start=$(date +%s)
deadline=$((start + budget))
if [ $smoke = 1 ]; then
    OUT=${OUT:-bench/out/gpu-smoke}
    py=${PYTHON:-.venv/bin/python}
    device=cpu
else
    OUT=${OUT:-bench/out/gpu-session}
    py=${PYTHON:-python3}
    device=cuda
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
R=$(mktemp -d)/results && mkdir -p "$R"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1

# The machine's python3 lacks some dependencies: the carried wheels (scripts/gpu-wheels.sh).
# Here (--smoke) the venv has them all, and the wheels are for the machine's Python 3.12.
if [ $smoke = 0 ] && [ -d .whl ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || echo "WHEEL INSTALL FAILED"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
# The real pairs travel in the ignored .pairs folder (bench/pairs.py reads it from here).
[ -d .pairs ] && export AUTODIP_PAIRS_DIR=$PWD/.pairs

pack() {  # results.tar replaced atomically: a cut session still returns a whole tar
    tar -C "$R" -cf "$OUT/.results.tar" . 2>/dev/null && mv -f "$OUT/.results.tar" "$OUT/results.tar"
}
(while sleep 20; do pack; done) &
packer=$!

# step NAME LIMIT COMMAND...: run under timeout, log to NAME.log and the console, record.
step() {
    local name=$1 limit=$2 left rc began
    shift 2
    if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then return; fi
    left=$((deadline - $(date +%s)))
    if [ $left -lt 20 ]; then
        echo "{\"step\": \"$name\", \"rc\": null, \"seconds\": 0, \"limit\": 0, \"note\": \"not run: budget spent\"}" >>"$R/steps.jsonl"
        echo "=== $name: not run, budget spent"
        return
    fi
    [ $left -lt $limit ] && limit=$left
    echo "=== $name (limit ${limit} s, $(date -u +%H:%M:%S) UTC)"
    began=$(date +%s)
    if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
        timeout -k 10 "$limit" bash -c "$(declare -f "$1"); $*" 2>&1 | tee "$R/$name.log"
    else
        timeout -k 10 "$limit" "$@" 2>&1 | tee "$R/$name.log"
    fi
    rc=$?
    local note=""
    [ $rc = 124 ] || [ $rc = 137 ] && note="cut by its timeout"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - began)), \"limit\": $limit, \"note\": \"$note\"}" >>"$R/steps.jsonl"
    echo "=== $name: exit $rc after $(($(date +%s) - began)) s $note"
    pack
}

# Sizes: the issue's on the GPU; tiny on CPU for --smoke (depth <= 6 configurations, since a
# depth-8 network pads every plane to 512 px; 2-3 iterations; 64 px crops of the pairs).
if [ $smoke = 1 ]; then
    base="--sizes 64 --iterations 2 --warmup 1"
    base_variants=eager,channels_last,bf16
    wide="--configs 4/16/4 --sizes 64 --iterations 2 --warmup 1 --batch 1,2"
    wide_variants=eager,bf16
    case_args="--crop 64"; case_fit="--iterations 2"; fast=bf16,channels_last
    q="--iterations 2 --crop 64 --seeds 0,1 --late 2 --every 1"
    cost="--configs 4/16/4 --members 1,2 --size 64 --iterations 2 --warmup 1 --variants eager"
    sq="--seeds 0 --members 1,2 --crop 64 --iterations 3"
    sq_wide=fmd-confocal-mito  # (widefield groups are depth 8: 512 px even when cropped)
    sq_more=fmd-confocal-mito
else
    base="--sizes 512 --iterations 15 --warmup 5"
    base_variants=eager,strict-fp32,tf32,channels_last,bf16,cuda_graphs,fast,compiled-bf16
    wide="--configs 8/asc/4,8/32/4 --sizes 512 --iterations 10 --warmup 5 --batch 1,8,32,64"
    wide_variants=eager,cuda_graphs,bf16,fast
    case_args=""; case_fit=""; fast=bf16,channels_last,cuda_graphs
    q="--seeds 0,1,2 --late 100 --every 5"
    cost="--configs 8/asc/4,8/32/4,6/256/4,5/128/4,4/32/4 --members 1,4,8 --iterations 30 --warmup 5 --variants eager,fast"
    sq="--seeds 0,1,2 --members 1,3,4,8"  # 3: the CPU default, replayed from the same fits
    sq_wide=fmd-widefield-nucleus,hagen-nucleus,w2s-005-ch0
    # issue 14's widefield pairs that waited for CPU time; last, so a rerun can ask for it
    sq_more=w2s-056-ch1,w2s-010-ch0,w2s-118-ch2,fmd-widefield-rgb-mito,fmd-widefield-rgb-actin
fi

export py device case_args case_fit fast R
confocal_runs() {  # paper mode: the issue's < 20 s target, plain and fastest settings
    "$py" bench/confocal_case.py $case_args --out "$R/confocal.json" --append --label paper-plain \
        -- --device $device --mode paper $case_fit &&
    "$py" bench/confocal_case.py $case_args --out "$R/confocal.json" --append --label "paper-$fast" \
        -- --device $device --mode paper --speed $fast $case_fit
}

step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; \"$py\" bench/gpu_env.py --out \"$R/env.json\""
step tests 150 "$py" -m pytest -p no:cacheprovider -m cuda -q -rA --junitxml="$R/tests-cuda.xml" \
    $(grep -l "pytest.mark.cuda" tests/test_*.py)
step speed-baseline 150 "$py" bench/speed.py --device $device --configs 5/128/4 $base \
    --variants $base_variants --out "$R/speed-baseline.json"
step speed-widefield 120 "$py" bench/speed.py --device $device $wide --variants $wide_variants \
    --out "$R/speed-widefield.json"
step confocal 150 confocal_runs
step quality-baseline 150 "$py" bench/quality.py --device $device --methods baseline \
    --pairs fmd-widefield-nucleus --variants eager,bf16,batched $q --out "$R/quality-baseline.json"
step quality-confocal 150 "$py" bench/quality.py --device $device --methods autodip \
    --pairs fmd-confocal-mito --variants eager,bf16,batched $q --out "$R/quality-confocal.json"
step stable-cost 90 "$py" bench/stable_gpu.py cost --device $device $cost --out "$R/stable.json" --append
step stable-quality-widefield 90 "$py" bench/stable_gpu.py quality --device $device $sq \
    --pairs $sq_wide --out "$R/stable.json" --append
step stable-quality-confocal 150 "$py" bench/stable_gpu.py quality --device $device $sq \
    --pairs fmd-confocal-mito --out "$R/stable.json" --append
step stable-quality-more 150 "$py" bench/stable_gpu.py quality --device $device $sq \
    --pairs $sq_more --out "$R/stable.json" --append

kill $packer 2>/dev/null
rm -f "$R"/*.part
"$py" bench/gpu_summary.py "$R" >"$R/summary.md" 2>&1
cp "$R/summary.md" "$OUT/summary.md"
pack
echo "=== done after $(($(date +%s) - start)) s; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
