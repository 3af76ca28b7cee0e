#!/usr/bin/env python3
"""HF transformers' side of issue 5's inference benchmark, shaped like `ferrotune bench generate --json`:
batch 1, one forward over a `--prompt-len` token prompt, then `--gen` greedy decode steps through the KV cache,
torch on the CPU with 2 threads, f32 (and bf16 with `--dtype bfloat16`).

    python scripts/bench_peers/generate_transformers.py .cache/models/SmolLM2-135M-Instruct-hf
"""
import argparse
import json
import resource
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


@torch.inference_mode()
def bench(path, dtype, prompt_len, gen, threads):
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    gen_ids = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, model.config.vocab_size - 100, (1, prompt_len), generator=gen_ids)

    def run(n_prompt, n_gen):
        start = time.perf_counter()
        out = model(prompt[:, :n_prompt], use_cache=True)
        prefill = time.perf_counter() - start
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(n_gen):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return prefill, time.perf_counter() - start

    run(32, 4)  # warm-up
    prefill, decode = run(prompt_len, gen)
    return {
        "engine": "transformers " + transformers.__version__ + " / torch " + torch.__version__,
        "format": dtype,
        "batch": 1,
        "threads": threads,
        "prompt_tok_per_s": round(prompt_len / prefill, 1),
        "decode_tok_per_s": round(gen / decode, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_avg": open("/proc/loadavg").read().split()[:3],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(json.dumps(bench(args.model, args.dtype, args.prompt_len, args.gen, args.threads)), flush=True)


if __name__ == "__main__":
    main()
