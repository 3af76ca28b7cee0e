#!/usr/bin/env python3
"""Issue 4's training benchmark, run the same way on ferrotune and on LLaMA-Factory.

Both runners get the *same* flat YAML (LLaMA-Factory's format, which ferrotune reads unchanged): SmolLM2-135M,
cutoff_len 256, per_device_train_batch_size 4, fp32, 2 threads, alpaca_en_demo (short alpaca-style records),
lora (rank 8, target all) / freeze / full, gradient checkpointing on (the default) or off. Each run's real
(unpadded) tokens come from the trainer's own `num_input_tokens_seen` with `include_num_input_tokens_seen:
non_padding` (HF counts attention_mask ones; ferrotune's batches have no padding), divided by train_runtime;
peak RSS is the child's maximum resident set (GNU time's %M). One JSON object per line on stdout.

    # LLaMA-Factory 0.9.5 + torch 2.15 + transformers 5.6 (pip, outside the repo):
    python scripts/bench_peers/train.py --runner llamafactory --cli /path/to/venv/bin/llamafactory-cli
    # ferrotune, same configs:
    python scripts/bench_peers/train.py --runner ferrotune --cli target/release/ferrotune

LLaMA-Factory needs an HF folder (`--model`, e.g. `ferrotune model convert` of the GGUF); ferrotune reads the
same folder, so both train the same weights on the same data.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "lora": {"finetuning_type": "lora", "lora_rank": 8, "lora_target": "all"},
    "freeze": {"finetuning_type": "freeze"},
    "full": {"finetuning_type": "full"},
}


def yaml_text(cfg):
    return "".join(f"{k}: {v}\n" for k, v in cfg.items())


def run_one(args, method, checkpointing):
    out_dir = tempfile.mkdtemp(prefix=f"bench-{args.runner}-{method}-")
    cfg = {
        "model_name_or_path": args.model,
        "stage": "sft",
        "do_train": "true",
        **CONFIGS[method],
        "dataset_dir": args.dataset_dir,
        "dataset": args.dataset,
        "template": "smollm2",
        "cutoff_len": 256,
        "max_samples": args.steps * 4 + 8,
        "overwrite_cache": "true",
        "output_dir": out_dir,
        "overwrite_output_dir": "true",
        "logging_steps": 1,
        "save_strategy": "\"no\"",  # quoted: YAML 1.1 reads a bare no as false
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": "1.0e-4",
        "max_steps": args.steps,
        "lr_scheduler_type": "constant",
        "disable_gradient_checkpointing": "false" if checkpointing else "true",
        "include_num_input_tokens_seen": "non_padding",
        "seed": 42,
    }
    cfg_path = os.path.join(out_dir, "bench.yaml")
    with open(cfg_path, "w") as f:
        f.write(yaml_text(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", RAYON_NUM_THREADS="2",
               CUDA_VISIBLE_DEVICES="", DISABLE_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false")
    cmd = [args.cli, "train", cfg_path]
    if args.runner == "ferrotune":
        cmd = [args.cli, "--threads", "2", "train", cfg_path]
    rss_path = os.path.join(out_dir, "peak_rss_kib")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_path] + cmd
    start = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"{args.runner} {method} failed with exit code {proc.returncode}")
    with open(os.path.join(out_dir, "trainer_state.json")) as f:
        state = json.load(f)
    with open(os.path.join(out_dir, "all_results.json")) as f:
        results = json.load(f)
    with open(rss_path) as f:
        peak_kib = int(f.read().split()[-1])
    tokens = max(e.get("num_input_tokens_seen", 0) for e in state["log_history"])
    runtime = results["train_runtime"]
    return {
        "runner": args.runner,
        "method": method,
        "gradient_checkpointing": checkpointing,
        "steps": args.steps,
        "real_tokens": tokens,
        "train_runtime_s": round(runtime, 2),
        "s_per_step": round(runtime / args.steps, 3),
        "real_tokens_per_s": round(tokens / runtime, 1),
        "peak_rss_gb": round(peak_kib / 1024 / 1024, 2),
        "wall_s": round(wall, 1),
        "load_avg": open("/proc/loadavg").read().split()[:3],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runner", choices=["ferrotune", "llamafactory"], required=True)
    p.add_argument("--cli", required=True, help="path to `ferrotune` or `llamafactory-cli`")
    p.add_argument("--model", default=".cache/models/SmolLM2-135M-Instruct-hf")
    p.add_argument("--dataset-dir", default=os.environ.get("FERROTUNE_LLAMAFACTORY_DATA", "../shared/data/llamafactory"))
    p.add_argument("--dataset", default="alpaca_en_demo")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", default="lora:on,lora:off,freeze:on,full:on",
                   help="comma-separated method:checkpointing pairs")
    args = p.parse_args()
    args.model = os.path.abspath(args.model)
    args.dataset_dir = os.path.abspath(args.dataset_dir)
    for run in args.runs.split(","):
        method, ckpt = run.split(":")
        print(json.dumps(run_one(args, method, ckpt == "on")), flush=True)


if __name__ == "__main__":
    main()
