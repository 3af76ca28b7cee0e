#!/usr/bin/env python3
"""llama.cpp's side of issue 5's inference benchmark, shaped like `ferrotune bench generate --json`:
batch 1, a `--prompt-len` token prompt processed in one call, then `--gen` greedy decode steps, 2 threads.
Times come from llama.cpp's own perf counters (llama_perf_context: prompt eval and eval), so Python's
per-token overhead is not charged to llama.cpp.

    pip install llama-cpp-python==0.3.36 numpy        # outside the repo; compiles llama.cpp (~15 min, 2 cores)
    python scripts/bench_peers/gguf_requant.py .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf f32 f16
    python scripts/bench_peers/generate_llamacpp.py .cache/models/SmolLM2-135M-Instruct.{F32,F16,Q4_1}.gguf
"""
import argparse
import json
import os
import resource

import llama_cpp
import numpy as np


def bench(path, prompt_len, gen, threads):
    llm = llama_cpp.Llama(model_path=path, n_ctx=prompt_len + gen + 8, n_batch=prompt_len, n_ubatch=prompt_len,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    prompt = [int(t) for t in rng.integers(100, vocab - 100, size=prompt_len)]
    # Warm-up: a short prompt and a few steps, then reset the counters and the cache.
    llm.eval(prompt[:32])
    for _ in range(4):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    llm.reset()
    llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
    llama_cpp.llama_perf_context_reset(llm.ctx)
    llm.eval(prompt)
    for _ in range(gen):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    perf = llama_cpp.llama_perf_context(llm.ctx)
    fmt = os.path.basename(path).split(".")[-2]
    return {
        "engine": "llama.cpp " + llama_cpp.__version__,
        "format": fmt,
        "batch": 1,
        "threads": threads,
        "prompt_tokens": perf.n_p_eval,
        "prompt_tok_per_s": round(perf.n_p_eval / (perf.t_p_eval_ms / 1000), 1),
        "decode_tokens": perf.n_eval,
        "decode_tok_per_s": round(perf.n_eval / (perf.t_eval_ms / 1000), 1),
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
