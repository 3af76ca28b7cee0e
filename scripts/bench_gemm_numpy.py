#!/usr/bin/env python3
"""numpy (OpenBLAS) sgemm on the shapes of `ferrotune bench gemm`, for a side-by-side comparison.

Measures exactly what ferrotune's bench measures: C = A @ B in f32 into a preallocated C (`np.matmul(..., out=)`),
one warm-up run, then repeated runs until --min-time has passed (at least 3); reports the best run (and the
median), by wall time or, with --cpu-time, by the thread's CPU time for single-thread runs. Threads are set with threadpoolctl. Prints the same JSON lines as `ferrotune bench gemm --json`
("impl": "numpy-openblas"); with --compare FILE (ferrotune's JSON lines) it also prints a ratio table.

Run it with OpenBLAS's environment overrides unset, since OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE pin an older
kernel and slow a current numpy down:

    cargo build --release --bin ferrotune
    target/release/ferrotune bench gemm --json > ferrotune.jsonl
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_gemm_numpy.py --compare ferrotune.jsonl

Needs numpy and threadpoolctl (pip install numpy threadpoolctl); nothing in CI depends on it.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def default_shapes():
    shapes = [(1024, 1024, 1024)]
    for t in (512, 1024, 2048):
        shapes += [(t, 1536, 576), (t, 576, 1536), (t, 49152, 576)]
    return shapes


def parse_shape(text):
    dims = [int(d) for d in text.lower().split("x")]
    if len(dims) != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected MxNxK with positive integers")
    return tuple(dims)


def operands(m, n, k, layout, rng):
    """A (m x k) and B (k x n) as views in the requested layout: 'tn' reads A transposed (stored k x m), 'nt'
    reads B transposed (stored n x k); numpy passes those to BLAS as transpose flags, without copying."""
    a = rng.uniform(-1, 1, (k, m) if layout == "tn" else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if layout == "nt" else (k, n)).astype(np.float32)
    return (a.T if layout == "tn" else a), (b.T if layout == "nt" else b)


def time_case(a, b, c, min_time, clock):
    np.matmul(a, b, out=c)
    times = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < min_time:
        t0 = clock()
        np.matmul(a, b, out=c)
        times.append(clock() - t0)
    times.sort()
    return times[0], times[len(times) // 2], len(times)


def blas_description():
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return f"{info.get('internal_api')} {info.get('version')} core type {info.get('architecture')}"
    return "no BLAS found by threadpoolctl"


def compare(ours_path, theirs):
    ours = {}
    with open(ours_path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                ours[(r["m"], r["n"], r["k"], r.get("layout", "nn"), r["threads"])] = r
    print()
    print(f"{'M':>6} {'N':>6} {'K':>6} {'layout':>6} {'threads':>7} {'ferrotune':>10} {'numpy':>10} {'ratio':>7}   (best-run GFLOP/s)")
    worst = None
    for r in theirs:
        key = (r["m"], r["n"], r["k"], r["layout"], r["threads"])
        if key not in ours:
            continue
        mine = ours[key]["gflops"]
        ratio = mine / r["gflops"]
        worst = ratio if worst is None else min(worst, ratio)
        print(f"{key[0]:>6} {key[1]:>6} {key[2]:>6} {key[3]:>6} {key[4]:>7} {mine:>10.1f} {r['gflops']:>10.1f} {ratio:>7.2f}")
    if worst is not None:
        print(f"lowest ratio ferrotune / numpy: {worst:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=lambda s: [parse_shape(x) for x in s.split(",")], default=default_shapes())
    p.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, os.cpu_count() or 1])
    p.add_argument("--layout", type=lambda s: s.split(","), default=["nn"])
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--cpu-time", action="store_true",
                   help="rank single-thread runs by this thread's CPU time (time.thread_time), as ferrotune's --cpu-time")
    p.add_argument("--compare", metavar="FERROTUNE_JSONL", help="ferrotune bench gemm --json output to compare with")
    args = p.parse_args()

    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var}={os.environ[var]} is set; unset it for a fair comparison", file=sys.stderr)
    print(f"numpy {np.__version__}, {blas_description()}", file=sys.stderr)

    rng = np.random.default_rng(0)
    results = []
    for m, n, k in args.shapes:
        for layout in args.layout:
            if layout not in ("nn", "tn", "nt"):
                sys.exit(f"layout {layout!r}: expected nn, tn or nt")
            a, b = operands(m, n, k, layout, rng)
            c = np.empty((m, n), dtype=np.float32)
            for threads in dict.fromkeys(args.threads):
                # With one BLAS thread OpenBLAS computes on the calling thread, so its CPU time is the product's.
                cpu = args.cpu_time and threads == 1
                with threadpool_limits(limits=threads, user_api="blas"):
                    best, median, runs = time_case(a, b, c, args.min_time, time.thread_time if cpu else time.perf_counter)
                flops = 2.0 * m * n * k
                r = {
                    "bench": "gemm", "impl": "numpy-openblas", "kernel": blas_description(), "dtype": "f32",
                    "layout": layout, "m": m, "n": n, "k": k, "threads": threads, "seconds": best,
                    "median_seconds": median, "runs": runs, "clock": "thread-cpu" if cpu else "wall",
                    "gflops": flops / best / 1e9,
                }
                results.append(r)
                print(json.dumps(r), flush=True)
            del a, b, c
    if args.compare:
        compare(args.compare, results)


if __name__ == "__main__":
    main()
