"""Golden greedy generations for ferrotune's inference engine (tests/infer_*.rs), from transformers in f32.

Rerun (the /work/pyref venv has torch + transformers 5.6):

    scripts/fetch-smollm2.sh                                  # the GGUF, into .cache/models/
    /work/pyref/bin/python scripts/golden/smollm2.py          # writes .cache/models/SmolLM2-135M-Instruct-hf/
    /work/pyref/bin/python scripts/golden/generate.py

The HF folder is transformers' own f32 dequantization of the Q4_1 GGUF (smollm2.py saves it), so ferrotune
loading the GGUF as f32 computes with the same weights. Written file:

tests/golden/infer_smollm2_greedy.json
    {"source": ..., "max_new_tokens": 32, "eos_token_id": 2,
     "cases": [{"messages": [...], "prompt": str (chat template rendered, add_generation_prompt=True),
                "prompt_ids": [...], "greedy_ids": [...] (new tokens only, eos included if reached),
                "greedy_text": str (skip_special_tokens=True)}, ...]}
    model.generate(do_sample=False, max_new_tokens=32), eager attention, KV cache on (transformers' default).
"""

import json
import pathlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
HF_DIR = REPO / ".cache/models/SmolLM2-135M-Instruct-hf"
OUT = REPO / "tests/golden/infer_smollm2_greedy.json"
MAX_NEW = 32

CASES = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
    [{"role": "user", "content": "Translate to French: 'I like coffee with milk.' Then add a coffee emoji."}],
    [{"role": "user", "content": "Explain how photosynthesis works."}],
]


def main():
    if not (HF_DIR / "config.json").is_file():
        raise SystemExit(f"{HF_DIR} is missing: run scripts/golden/smollm2.py first")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(HF_DIR)
    model = AutoModelForCausalLM.from_pretrained(HF_DIR, dtype=torch.float32, attn_implementation="eager").eval()
    eos = model.config.eos_token_id
    cases = []
    for messages in CASES:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=eos,
                temperature=None, top_p=None, top_k=None,
            )
        new = out[0, len(ids):].tolist()
        cases.append({"messages": messages, "prompt": prompt, "prompt_ids": ids, "greedy_ids": new,
                      "greedy_text": tok.decode(new, skip_special_tokens=True)})
        print(repr(cases[-1]["greedy_text"]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"source": "SmolLM2-135M-Instruct.Q4_1.gguf via transformers (scripts/golden/smollm2.py), f32",
                   "max_new_tokens": MAX_NEW, "eos_token_id": eos, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
