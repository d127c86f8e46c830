"""The SM clock while FP16 and one slimq call are timed one after the other and in alternating rounds (GPU).

Why ``kernels.py --rounds``: a tensor-core-bound call moves the card's clock (H200, 28672 x 8192 at 1024 tokens,
run 93: the first FP16 window ran at 1980 MHz and took 638 us, later ones at 1515-1605 MHz and 669-689 us), so
a ratio of two calls timed in separate 40 ms windows depends on what ran before each. This times FP16 and the
dispatch's call in six sequential windows (``timing.time_graph``), then in alternating rounds both ways round
(``timing.time_graphs``), while ``nvidia-smi`` logs the SM clock, power and temperature every 20 ms; it prints
each window's time with the clocks seen during it and writes ``OUT/clock_drift.json``.

    PYTHONPATH=src python3 benchmarks/clock_drift.py [--shape 28672x8192] [--m 1024] [--variant 2b] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import VARIANTS, Case, build_layer  # noqa: E402

_QUERY = "timestamp,clocks.sm,power.draw,temperature.gpu"


def parse_smi(lines) -> list[tuple[float, int, float, int]]:
    """``(unix time, SM MHz, W, C)`` per ``nvidia-smi --query-gpu=<_QUERY> --format=csv,noheader`` line (the
    timestamps are the machine's local time, taken as UTC as ``time.time()`` is on the GPU machines)."""
    rows = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            t = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f")
            rows.append((t.replace(tzinfo=datetime.timezone.utc).timestamp(), int(parts[1].split()[0]),
                         float(parts[2].split()[0]), int(parts[3])))
        except ValueError:
            continue
    return rows


def summarize(marks: list, smi: list) -> list[dict]:
    """Each timed window with the SM clock range, peak power and last temperature logged during it."""
    out = []
    for name, t0, t1, us in marks:
        seen = [r for r in smi if t0 <= r[0] <= t1]
        row = {"window": name, "us": us}
        if seen:
            row.update(clock_mhz=[min(r[1] for r in seen), max(r[1] for r in seen)],
                       power_w_max=max(r[2] for r in seen), temp_c=seen[-1][3])
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="28672x8192")
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--variant", default="2b", choices=VARIANTS)
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("clock_drift.py needs a CUDA GPU (and nvidia-smi)")
    from timing import time_graph, time_graphs

    from slimq.kernels.triton import Workspace, resolve_config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, k = (int(v) for v in args.shape.split("x"))
    m, dev = args.m, torch.device("cuda")
    w16 = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
    x16 = torch.randn(m, k, device=dev, dtype=torch.float16)
    y16 = torch.empty(m, n, device=dev, dtype=torch.float16)
    p = build_layer(n, k, args.variant, dev)
    case = Case(p, m, dev, Workspace(dev, m, n, k, torch.float16, dequant=True))
    fp16, ours = (lambda: torch.mm(x16, w16.t(), out=y16)), case.fn(resolve_config(case.x, p))
    ours(), fp16()
    torch.cuda.synchronize()
    log_path = out / "smi.csv"
    with open(log_path, "w") as log_file:
        log = subprocess.Popen(["nvidia-smi", f"--query-gpu={_QUERY}", "--format=csv,noheader", "-lms", "20"],
                               stdout=log_file)
        try:
            time.sleep(2)  # idle: the clock settles back
            marks = []
            for name, fn in (("fp16", fp16), ("ours", ours), ("fp16", fp16), ("ours", ours), ("ours", ours),
                             ("fp16", fp16)):
                t0 = time.time()
                us = time_graph(fn)
                marks.append((f"{name} (sequential, 40 ms)", t0, time.time(), us))
            time.sleep(2)
            for order in (("fp16", "ours"), ("fp16", "ours"), ("ours", "fp16"), ("ours", "fp16")):
                t0 = time.time()
                us = time_graphs({o: {"fp16": fp16, "ours": ours}[o] for o in order}, rounds=5)
                marks.append((f"rounds {order[0]} first", t0, time.time(), us))
            time.sleep(0.5)
        finally:
            log.terminate()
            log.wait()
    rows = summarize(marks, parse_smi(log_path.read_text().splitlines()))
    for r in rows:
        us = r["us"] if isinstance(r["us"], float) else ", ".join(f"{a} {b:.1f}" for a, b in r["us"].items())
        print(f"{r['window']:28s} {us}  clock {r.get('clock_mhz')} MHz, power max {r.get('power_w_max')} W")
    meta = {"gpu": torch.cuda.get_device_name(dev), "shape": args.shape, "M": m, "variant": args.variant}
    (out / "clock_drift.json").write_text(json.dumps({"meta": meta, "windows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
