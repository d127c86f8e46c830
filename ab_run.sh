#!/bin/bash
# A/B on the device: new code (gather rows 4, 1, 8; weights before the PDL wait) against HEAD's files in ab_old/
export PYTHONPATH=src
S=4096x4096,4096x11008,11008x4096,8192x8192
run() { timeout 120 python3 benchmarks/kernels.py --shapes $S --ms 256,512,1024 --no-peer --rounds 5 --out $OUT/$1 2>&1 | grep -A20 "N x K" | tail -13 > $OUT/$1.txt; echo "== $1"; cat $OUT/$1.txt; }
mkdir -p ab_new && cp src/slimq/kernels/triton/{_wgr.py,_wgrk.py,_kernels.py,_plan.py,_wgr_plan.py} ab_new/
run new4
cp ab_old/*.py src/slimq/kernels/triton/; run old
cp ab_new/*.py src/slimq/kernels/triton/; sed -i 's/^_GATHER_ROWS = 4/_GATHER_ROWS = 1/' src/slimq/kernels/triton/_wgr_plan.py; run new1
sed -i 's/^_GATHER_ROWS = 1/_GATHER_ROWS = 8/' src/slimq/kernels/triton/_wgr_plan.py; run new8
cp ab_old/*.py src/slimq/kernels/triton/; run old2
cp ab_new/*.py src/slimq/kernels/triton/; run new4b
