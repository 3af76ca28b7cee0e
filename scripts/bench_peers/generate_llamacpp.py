#!/usr/bin/env python3
"""llama.cpp's side of issue 5's inference benchmark, shaped like `ferrotune bench generate --json`:
batch 1, a `--prompt-len` token prompt processed in one call, then `--gen` greedy decode steps, 2 threads.
Times come from llama.cpp's own perf counters (llama_perf_context) where the build keeps them, so Python's
per-token overhead is not charged to llama.cpp; else from timers around each eval call (an argmax over the
vocabulary per step is then included, about 0.05 ms).

    pip install llama-cpp-python==0.3.36 numpy        # outside the repo; compiles llama.cpp (~15 min, 2 cores)
    python scripts/bench_peers/gguf_requant.py .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf f32 f16
    python scripts/bench_peers/generate_llamacpp.py .cache/models/SmolLM2-135M-Instruct.{F32,F16,Q4_1}.gguf
"""
import argparse
import json
import os
import resource
import time

import llama_cpp
import numpy as np


def bench(path, prompt_len, gen, threads):
    # n_batch is also the row count of llama-cpp-python's score buffer, which decode steps index by position.
    n_ctx = prompt_len + gen + 8
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=prompt_len,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    prompt = [int(t) for t in rng.integers(100, vocab - 100, size=prompt_len)]
    # Warm-up: a short prompt and a few steps, then reset the counters and the cache.
    llm.eval(prompt[:32])
    for _ in range(4):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    start = time.perf_counter()
    llm.eval(prompt)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(gen):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode_s = time.perf_counter() - start
    perf = llama_cpp.llama_perf_context(llm.ctx)
    if perf.n_eval and perf.t_eval_ms > 0:
        # llama.cpp's own counters where this build keeps them (no Python overhead in them).
        prefill_s, decode_s = perf.t_p_eval_ms / 1000, perf.t_eval_ms / 1000
    fmt = os.path.basename(path).split(".")[-2]
    return {
        "engine": "llama.cpp " + llama_cpp.__version__,
        "format": fmt,
        "batch": 1,
        "threads": threads,
        "prompt_tokens": prompt_len,
        "prompt_tok_per_s": round(prompt_len / prefill_s, 1),
        "decode_tokens": gen,
        "decode_tok_per_s": round(gen / decode_s, 1),
        "timer": "llama.cpp perf counters" if perf.n_eval else "python perf_counter around eval",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_avg": open("/proc/loadavg").read().split()[:3],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    for path in args.models:
        print(json.dumps(bench(path, args.prompt_len, args.gen, args.threads)), flush=True)


if __name__ == "__main__":
    main()
