"""Golden Ollama Modelfiles from LLaMA-Factory 0.9.5's own `Template.get_ollama_modelfile`, for
tests/data_llamafactory.rs: what `llamafactory-cli export` writes as `export_dir/Modelfile`, per template, with
the SmolLM2 tokenizer (special tokens fixed by `get_template_and_fix_tokenizer` first, as export does).

    pip install llamafactory==0.9.5     # in a venv outside the repo (torch / transformers as its pins allow)
    python scripts/golden/ollama_modelfile.py [--tokenizer .cache/models/SmolLM2-135M-Instruct-hf]

Output: tests/golden/ollama_modelfile.json, {template: modelfile text}.
"""

import argparse
import json
import os

from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments
from transformers import AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = ["default", "empty", "alpaca", "chatml", "qwen", "llama2", "llama3", "mistral", "smollm", "smollm2",
             "gemma", "phi", "vicuna", "zephyr", "qwen3"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", default=os.path.join(REPO, ".cache/models/SmolLM2-135M-Instruct-hf"))
    args = p.parse_args()
    out = {}
    for name in TEMPLATES:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=name))
        out[name] = template.get_ollama_modelfile(tokenizer)
    path = os.path.join(REPO, "tests/golden/ollama_modelfile.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(path)


if __name__ == "__main__":
    main()
