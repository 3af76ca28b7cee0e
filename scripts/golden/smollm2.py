"""Golden fixtures for ferrotune's GGUF loader and the Llama model, from transformers' own GGUF path.

Rerun (needs torch, transformers >= 4.45, gguf, sentencepiece, protobuf; e.g. the /work/pyref venv):

    scripts/fetch-smollm2.sh                                # the model, into .cache/models/
    /work/pyref/bin/pip install gguf sentencepiece protobuf
    /work/pyref/bin/python scripts/golden/smollm2.py        # FERROTUNE_SMOLLM2_GGUF=... to use another copy

transformers dequantizes the Q4_1 GGUF itself (gguf-py), undoes llama.cpp's Q/K row permutation and converts the
GGUF vocabulary to a `tokenizers` tokenizer; ferrotune must agree with all three. Written files:

tests/golden/smollm2_tokenizer.json   {"strings": [...], "ids": [[...], ...], "chat_prompt": str, "chat_ids": [...]}
    ids from AutoTokenizer.from_pretrained(dir, gguf_file=...) with add_special_tokens=False (SmolLM2's GGUF says
    add_bos_token = false, so the two agree; the flag is stated so the fixture does not depend on it).

tests/golden/smollm2_forward.safetensors (f32 model, eager attention, no dropout)
    input_ids      i64 [T]      the chat below rendered with the GGUF's chat_template, tokenized as above
    labels         i64 [T]      = input_ids; HF shifts inside the loss: logits[t] predicts labels[t+1]
    loss           f32 [1]      model(input_ids[None], labels=labels[None]).loss (mean over the T-1 predictions)
    last_logits    f32 [49152]  logits at the last position
    w.<hf name>.rows  f32 [R, C]  the first R rows of a weight as transformers loaded it (q_proj/k_proj prove the
                                  Q/K un-permutation; embed/down_proj/norm cover Q8_0, Q4_1 and F32 tensors)
    metadata: "chat_prompt" (the rendered text), "rows" (the slice length), "source" (GGUF file name + sha256)

tests/golden/smollm2_ggml_blocks.safetensors (independent of the model; kept under this script's smollm2_ prefix)
    blocks.<TYPE>  u8  [4 * bytes per block]  random block bytes, with every f16 scale field set to a finite value
    values.<TYPE>  f32 [4 * weights per block] gguf-py's `gguf.quants.dequantize` of those bytes
    for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K; `--blocks-only` writes just this file (no torch model needed).

Also saves the converted HF folder (save_pretrained, f32 safetensors + tokenizer.json) to
.cache/models/SmolLM2-135M-Instruct-hf/ for local tests of the safetensors path; it is not committed. Its
eos_token/pad_token are set from the GGUF ids ("<|im_end|>"), correcting transformers' GGUF tokenizer conversion,
which reports the BOS string "<|im_start|>" as eos_token.
"""

import hashlib
import json
import os
import pathlib
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF = pathlib.Path(os.environ.get("FERROTUNE_SMOLLM2_GGUF", REPO / ".cache/models" / NAME))
GOLDEN = REPO / "tests/golden"
HF_DIR = REPO / ".cache/models/SmolLM2-135M-Instruct-hf"
ROWS = 8

STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, 3.14159 × 42 = 131.946; phone 555-0123.",
    "我爱自然语言处理。今天天气很好！",
    "Emoji: 🦀🚀👩‍💻 ✨ done",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).collect();\n}",
    "   leading and trailing spaces   ",
    "tabs\t\tand\nnew\n\n\nlines  \r\n end",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "don't won't I'm we're they've he'll she'd",
    "Ünïcödé façade naïve café — «quotes» “curly”",
    "",
    " ",
    "a" * 40,
]

CHAT = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and the cafés along the Seine."},
]

WEIGHT_ROWS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.29.self_attn.k_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.norm.weight",
]


# (type, byte offsets of its f16 scale fields) in ggml-common.h's block structs.
BLOCK_TYPES = [
    ("Q4_0", [0]), ("Q4_1", [0, 2]), ("Q5_0", [0]), ("Q5_1", [0, 2]), ("Q8_0", [0]),
    ("Q2_K", [80, 82]), ("Q3_K", [108]), ("Q4_K", [0, 2]), ("Q5_K", [0, 2]), ("Q6_K", [208]),
]


def write_blocks():
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    rng = np.random.default_rng(20260101)
    tensors = {}
    for name, scale_fields in BLOCK_TYPES:
        qtype = GGMLQuantizationType[name]
        block, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(4, size), dtype=np.uint8)
        for at in scale_fields:
            scales = rng.uniform(-0.1, 0.1, size=4).astype(np.float16)
            raw[:, at:at + 2] = scales.view(np.uint8).reshape(4, 2)
        values = dequantize(raw.reshape(-1), qtype).reshape(-1).astype(np.float32)
        assert values.size == 4 * block and np.isfinite(values).all()
        tensors[f"blocks.{name}"] = torch.from_numpy(raw.reshape(-1).copy())
        tensors[f"values.{name}"] = torch.from_numpy(values.copy())
    save_file(tensors, GOLDEN / "smollm2_ggml_blocks.safetensors", metadata={"source": "gguf-py gguf.quants.dequantize"})


def main():
    write_blocks()
    if "--blocks-only" in sys.argv:
        return
    sha = hashlib.sha256(GGUF.read_bytes()).hexdigest()
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in STRINGS]
    prompt = tok.apply_chat_template(CHAT, tokenize=False)
    chat_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    GOLDEN.mkdir(parents=True, exist_ok=True)
    with open(GOLDEN / "smollm2_tokenizer.json", "w", encoding="utf-8") as f:
        json.dump({"source": f"{NAME} sha256 {sha}", "strings": STRINGS, "ids": ids,
                   "chat_prompt": prompt, "chat_ids": chat_ids}, f, ensure_ascii=False, indent=1)

    model = AutoModelForCausalLM.from_pretrained(
        GGUF.parent, gguf_file=GGUF.name, torch_dtype=torch.float32, attn_implementation="eager"
    ).eval()
    input_ids = torch.tensor(chat_ids, dtype=torch.int64)
    with torch.no_grad():
        out = model(input_ids[None], labels=input_ids[None])
    state = model.state_dict()
    tensors = {
        "input_ids": input_ids,
        "labels": input_ids.clone(),
        "loss": out.loss.detach().reshape(1).float(),
        "last_logits": out.logits[0, -1].float().contiguous(),
    }
    for name in WEIGHT_ROWS:
        w = state[name].float()
        tensors[f"w.{name}.rows"] = (w[:ROWS] if w.dim() == 2 else w[None, :]).contiguous()
    save_file(tensors, GOLDEN / "smollm2_forward.safetensors",
              metadata={"chat_prompt": prompt, "rows": str(ROWS), "source": f"{NAME} sha256 {sha}"})
    print(f"T = {len(chat_ids)} tokens, loss = {out.loss.item():.6f}")

    # transformers' GGUFLlamaConverter sets eos_token to the BOS string (it indexes tokens with bos_token_id for
    # both); the saved folder should carry the file's own eos/pad tokens, as config.json already does.
    from gguf import GGUFReader

    fields = GGUFReader(GGUF).fields
    for attr, key in [("eos_token", "tokenizer.ggml.eos_token_id"), ("pad_token", "tokenizer.ggml.padding_token_id")]:
        if key in fields:
            setattr(tok, attr, tok.convert_ids_to_tokens(int(fields[key].contents())))
    HF_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(HF_DIR)
    tok.save_pretrained(HF_DIR)
    print(f"wrote {GOLDEN}/smollm2_tokenizer.json, smollm2_forward.safetensors and {HF_DIR}")


if __name__ == "__main__":
    main()
