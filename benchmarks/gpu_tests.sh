#!/usr/bin/env bash
# Run the GPU-side kernel tests in parallel shards (they are compile-bound: ~125 tests take ~10 min in one
# process, ~2.5 min in 8 shards on 16 cores). Usage on a GPU machine: OUT=/tmp/t bash benchmarks/gpu_tests.sh
# Env: SHARDS (8), TEST_S (per-shard timeout, 400), EXTRA_TESTS (more test files). Logs: $OUT/tests<i>.log
export PYTHONPATH=src
OUT=${OUT:?set OUT to a log folder}; mkdir -p "$OUT"
python3 -m pytest --collect-only -q tests/test_kernels_triton.py tests/test_kernels_mv.py tests/test_qlinear.py tests/test_wgr.py tests/test_wg_direct.py ${EXTRA_TESTS:-} 2>/dev/null | grep "::" > $OUT/ids.txt
N=${SHARDS:-8}
for i in $(seq 0 $((N-1))); do
  awk -v n=$N -v i=$i 'NR % n == i' $OUT/ids.txt > $OUT/shard$i.txt
  timeout ${TEST_S:-400} python3 -m pytest -q -p no:cacheprovider $(cat $OUT/shard$i.txt) > $OUT/tests$i.log 2>&1 &
done
wait
for i in $(seq 0 $((N-1))); do echo "shard $i: $(tail -1 $OUT/tests$i.log)"; done
grep -h "FAILED\|Error" $OUT/tests*.log | head -20
