"""Check that transformers loads an HF folder ferrotune wrote and reproduces the SmolLM2 golden fixture.

    ./target/release/ferrotune model convert .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol-hf
    python scripts/check_hf_folder.py /tmp/smol-hf          # needs: pip install torch transformers safetensors

Prints HF's loss on the fixture's chat prompt next to the golden loss (tests/golden/smollm2_forward.safetensors,
computed by transformers from the GGUF itself) and the largest last-position logit difference. Not run by CI.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(folder)
golden = load_file("tests/golden/smollm2_forward.safetensors")
ids = golden["input_ids"].long().reshape(1, -1)
with torch.no_grad():
    out = model(input_ids=ids, labels=golden["labels"].long().reshape(1, -1))
print(f"loss {out.loss.item():.7f} (golden {golden['loss'].item():.7f})")
print(f"max |last logits - golden| {(out.logits[0, -1].float() - golden['last_logits']).abs().max().item():.3g}")
print(f"tokenizer: {tokenizer('Hello 世界 🙂')['input_ids']} eos={tokenizer.eos_token!r} bos={tokenizer.bos_token!r}")
