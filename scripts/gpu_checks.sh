#!/usr/bin/env bash
# Every GPU check and measurement of napari-msunet in one short run on a lent GPU machine
# (the device tool: python3 there is 3.12 with torch + CUDA; no registry, so the project's
# missing dependencies travel as wheels in .whl and EBHI-Seg as a packed copy in .gpudata).
#
#   here:   python scripts/gpu_pack_ebhi.py pack ../shared/data/ebhi-seg .gpudata/ebhi
#           python examples/ebhi_experiments.py --data ../shared/data/ebhi-seg --out R \
#               --prepare-only examples/experiments/*.yaml; mkdir .gpudata/exp;
#           cp -r R/split.csv R/noisy-masks-* .gpudata/exp/
#           (plus the wheels: see /work/.library/device/README.md)
#   there:  bash scripts/gpu_checks.sh      with carry [".whl", ".gpudata"], results in $OUT
#
# Phases have their own time limits so that whatever finished comes back:
#   1. the CUDA tests (pytest -m gpu)             ~1 min
#   2. bench_inference.py --device cuda            ~2 min, alone on the card
#   2b. the same on a 32768² slide (issue 14: end to end <= 1.5x model-only)  ~3 min
#   3. Experiments III and I at the converged budget (issue 18: 20 x 200 steps, cosine, new
#      noise arms, per-image scores; lite widths like the CPU-budget runs in docs/results.md),
#      seeds $EXP_SEEDS (default 0 1), until the deadline, 7 processes sharing the card. Finished
#      runs come back in experiments.tar.gz; put their runs/ into .gpudata/exp to carry them
#      to the next session, which then trains only what is missing.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T0=$(date +%s)
BUDGET=${GPU_BUDGET_S:-560}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } \
    2>&1 | tee "$OUT/machine.txt"

# 1. CUDA correctness tests
timeout 120 python3 -m pytest -q -p no:xvfb -p no:cacheprovider -m gpu \
    tests/inference/test_device_paths.py tests/training/test_trainer.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

# 2. inference benchmark on CUDA, alone on the card (zlib tiles: imagecodecs does not travel)
timeout 200 python3 benchmarks/bench_inference.py --workdir /tmp/bench --device cuda \
    --size 16384 --compression zlib --rss-sizes --margin-scan 0 --repeat 1 \
    2>&1 | tee "$OUT/bench_inference_cuda.txt" | tail -40
# 2b. a slide large enough for the steady state (issue 14): 32768² read at 1 µm/px (8192²)
timeout 240 python3 benchmarks/bench_inference.py --workdir /tmp/bench --device cuda \
    --size 32768 --compression zlib --rss-sizes --margin-scan 0 --repeat 1 \
    2>&1 | tee "$OUT/bench_inference_cuda_32k.txt" | tail -40

# 3. EBHI experiments at the converged budget, 7 processes sharing the card until the deadline
python3 scripts/gpu_pack_ebhi.py unpack .gpudata/ebhi /tmp/ebhi
mkdir -p /tmp/exp
# the very split and corrupted masks of the CPU runs (made here by --prepare-only)
cp -r .gpudata/exp/. /tmp/exp/
EXPS="examples/experiments/exp3_converged_noise.yaml examples/experiments/exp1_converged.yaml"
python3 examples/ebhi_experiments.py --data /tmp/ebhi --out /tmp/exp --prepare-only $EXPS
LEFT=$((BUDGET - ($(date +%s) - T0) - 25))
echo "experiments get ${LEFT} s"
for i in 0 1 2 3 4 5 6; do
    OMP_NUM_THREADS=2 timeout $LEFT python3 examples/ebhi_experiments.py --data /tmp/ebhi \
        --out /tmp/exp --device cuda --seeds ${EXP_SEEDS:-0 1} --shard $i/7 $EXPS \
        >"/tmp/exp/shard$i.log" 2>&1 &
    sleep 1
done
wait
cat /tmp/exp/shard*.log > "$OUT/experiments.log"
tail -30 "$OUT/experiments.log"
(cd /tmp/exp && tar czf "$OUT/experiments.tar.gz" split.csv runs/*/result.json runs/*/history.jsonl noisy-masks-*/report.json 2>/dev/null)
ls -la "$OUT"
echo "total $(( $(date +%s) - T0 )) s"
