"""Golden data fixtures from LLaMA-Factory 0.9.5 itself: its converters, templates and processors run over its
demo data with the SmolLM2 tokenizer, written as token ids + labels for tests/data_llamafactory.rs.

Setup (this script installs nothing):
    # transformers 5.6 + torch 2.15 (e.g. the /work/pyref venv), and LLaMA-Factory's wheel unpacked:
    pip download llamafactory==0.9.5 --no-deps -d /tmp/lf && cd /tmp/lf && unzip -o llamafactory-0.9.5-*.whl
    python3 scripts/golden/smollm2.py          # writes .cache/models/SmolLM2-135M-Instruct-hf
    /work/pyref/bin/python scripts/golden/llamafactory_data.py [--lf /tmp/lf] [--data /work/shared/data/llamafactory]

Only LLaMA-Factory's `data` modules are imported (template, converter, processors); the packages they import at
module level but do not use here (peft, datasets, torchaudio, ...) are replaced by empty stand-ins when absent, so
a full `pip install llamafactory` is not needed. Datasets are read the way `datasets` reads local json/jsonl/txt
files for these demos (a json array, json lines, one `text` per line), truncated to `max_samples` each, converted
by LLaMA-Factory's converter and concatenated (`mix_strategy: concat`).

Output: tests/golden/data_llamafactory.json. Per case: the DataOptions fields the test copies, and per output row
`ids` (input ids) and `mask` (one char per token: '-' label is IGNORE_INDEX, '=' label equals the input id, 'x' the
label is the next entry of `other`), plus position ids / sequence lengths for packed rows; `sft_generate` rows (the
unsupervised processor of predict_with_generate) give `ids` and `label_ids` (the response, not aligned with ids).
"""

import argparse
import copy
import importlib.machinery
import json
import os
import sys
import types
from types import SimpleNamespace

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_llamafactory(lf_root):
    for name, path in [("llamafactory", lf_root + "/llamafactory"), ("llamafactory.data", lf_root + "/llamafactory/data")]:
        m = types.ModuleType(name)
        m.__path__ = [path]
        sys.modules[name] = m

    class Stub(types.ModuleType):
        def __getattr__(self, k):
            if k.startswith("__"):
                raise AttributeError(k)
            return type(k, (), {})

    for n in ["peft", "peft.utils", "peft.tuners", "trl", "torchaudio", "datasets"]:
        try:
            __import__(n)
        except ImportError:
            st = Stub(n)
            st.__path__ = []
            st.__spec__ = importlib.machinery.ModuleSpec(n, None)
            sys.modules[n] = st
    if not hasattr(sys.modules["peft.utils"], "SAFETENSORS_WEIGHTS_NAME") or isinstance(sys.modules["peft.utils"], Stub):
        sys.modules["peft.utils"].SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
        sys.modules["peft.utils"].WEIGHTS_NAME = "adapter_model.bin"
    from llamafactory.data import converter, template
    from llamafactory.data.parser import DatasetAttr
    from llamafactory.data.processor import pairwise, pretrain, supervised, unsupervised

    return template, converter, supervised, pretrain, pairwise, unsupervised, DatasetAttr


def read_records(path):
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
        return [{"text": line.rstrip("\r")} for line in lines] if text else []
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


# Small extra datasets (written into the fixture, so the Rust test loads the same records): sharegpt with a
# system turn and several turns, an alpaca history, an openai-style chat, and one broken example to drop.
EXTRA = {
    "extra_sharegpt": {
        "info": {"file_name": "extra_sharegpt.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"}},
        "records": [
            {
                "conversations": [
                    {"from": "system", "value": "You are a terse assistant. Answer in one line."},
                    {"from": "human", "value": "What is the capital of France?"},
                    {"from": "gpt", "value": "Paris."},
                    {"from": "human", "value": "And of Italy? Explain briefly why it became the capital."},
                    {"from": "gpt", "value": "Rome, the historic centre of the peninsula and seat of the papacy, became capital in 1871."},
                    {"from": "human", "value": "Thanks!"},
                    {"from": "gpt", "value": "You're welcome."},
                ]
            },
            {
                "system": "Always answer politely.",
                "conversations": [
                    {"from": "human", "value": "Translate 'good morning' into German."},
                    {"from": "gpt", "value": "Guten Morgen."},
                ],
            },
            {"conversations": [{"from": "human", "value": "broken"}, {"from": "human", "value": "two user turns"}]},
        ],
    },
    "extra_history": {
        "info": {"file_name": "extra_history.json", "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system"}},
        "records": [
            {
                "instruction": "Now add 7.",
                "input": "Show the arithmetic.",
                "output": "12 + 7 = 19.",
                "system": "You are a calculator.",
                "history": [["What is 5 + 7?", "5 + 7 = 12."]],
            }
        ],
    },
    "extra_openai": {
        "info": {
            "file_name": "extra_openai.json",
            "formatting": "openai",
            "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"},
        },
        "records": [
            {
                "messages": [
                    {"role": "user", "content": "Name a prime number larger than 10."},
                    {"role": "assistant", "content": "11 is the smallest prime larger than 10."},
                ]
            }
        ],
    },
}

SFT_DATASETS = ["alpaca_en_demo", "alpaca_zh_demo", "identity", "glaive_toolcall_en_demo", "extra_sharegpt", "extra_history", "extra_openai"]
TEMPLATES = [
    "alpaca", "breeze", "chatml", "chatml_de", "cohere", "cpm4", "deepseek", "default", "empty", "falcon", "gemma",
    "gemma2", "intern2", "llama2", "llama2_zh", "llama3", "mistral", "olmo", "openchat", "opencoder", "phi", "phi4",
    "qwen", "qwen3", "qwen3_nothink", "smollm", "smollm2", "solar", "starchat", "vicuna", "xuanyuan", "yi", "zephyr",
]
# Their tool formats (llama3, mistral) are not implemented in ferrotune: no tool data for them.
NO_TOOLS = {"llama3", "mistral"}


def encode_rows(rows):
    out = []
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        mask, other = [], []
        for i, lab in zip(ids, labels):
            if lab == -100:
                mask.append("-")
            elif lab == i:
                mask.append("=")
            else:
                mask.append("x")
                other.append(lab)
        r = {"ids": ids, "mask": "".join(mask)}
        if other:
            r["other"] = other
        for k in ("position_ids", "attention_mask"):
            if k in row:
                r[k] = row[k]
        out.append(r)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lf", default="/tmp/lf")
    ap.add_argument("--data", default="/work/shared/data/llamafactory")
    ap.add_argument("--tokenizer", default=os.path.join(REPO, ".cache/models/SmolLM2-135M-Instruct-hf"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests/golden/data_llamafactory.json"))
    args = ap.parse_args()

    template_mod, converter_mod, supervised_mod, pretrain_mod, pairwise_mod, unsupervised_mod, DatasetAttr = import_llamafactory(args.lf)
    from transformers import AutoTokenizer

    with open(os.path.join(args.data, "dataset_info.json")) as f:
        info = json.load(f)
    for name, extra in EXTRA.items():
        info[name] = extra["info"]

    def load(names, max_samples, fmt_args):
        aligned = []
        for name in names:
            entry = info[name]
            attr = DatasetAttr("file", dataset_name=entry["file_name"])
            attr.join(entry)
            records = EXTRA[name]["records"] if name in EXTRA else read_records(os.path.join(args.data, entry["file_name"]))
            keys = []
            for r in records:  # a `datasets` table has every column in every row (None where absent)
                keys += [k for k in r if k not in keys]
            records = [{k: r.get(k) for k in keys} for r in records]
            if max_samples is not None:
                records = records[:max_samples]
            conv = converter_mod.get_dataset_converter(attr.formatting, attr, fmt_args)
            aligned += [conv(r) for r in records]
        return {k: [a[k] for a in aligned] for k in ["_prompt", "_response", "_system", "_tools", "_images", "_videos", "_audios"]}

    def data_args(**kw):
        d = dict(template=None, cutoff_len=2048, train_on_prompt=False, mask_history=False, packing=None, neat_packing=False,
                 tool_format=None, default_system=None, enable_thinking=True, preserve_thinking=False, media_dir=args.data)
        d.update(kw)
        # DataArguments.__post_init__
        if d["neat_packing"]:
            d["packing"] = True
        if d["packing"]:
            d["cutoff_len"] -= 1
        return SimpleNamespace(**d)

    cases = []

    def load_tokenizer():
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        # transformers' GGUF converter (which wrote this folder) gives SmolLM2 a plain ByteLevel pre-tokenizer; the
        # model's own tokenizer.json, and llama.cpp's `smollm` pre-tokenizer that ferrotune reads from the GGUF, split
        # every digit first (Digits + ByteLevel). They differ on e.g. ":\n\n1." - use the model's own pipeline.
        from tokenizers import pre_tokenizers

        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
        return tok

    def run(name, stage, datasets, max_samples, **opts):
        tok = load_tokenizer()
        da = data_args(**opts)
        if da.template is None:
            tmpl = template_mod.get_template_and_fix_tokenizer(tok, da)
        else:
            saved = template_mod.TEMPLATES[da.template]
            template_mod.TEMPLATES[da.template] = copy.deepcopy(saved)
            tmpl = template_mod.get_template_and_fix_tokenizer(tok, da)
            template_mod.TEMPLATES[da.template] = saved
        examples = load(datasets, max_samples, da)
        if stage == "pt":
            da.packing = da.packing if da.packing is not None else True  # parser: packing defaults on for pt
            proc = pretrain_mod.PretrainDatasetProcessor(tmpl, tok, None, da)
            out = proc.preprocess_dataset(examples)
            rows = [{"input_ids": ids, "labels": ids} for ids in out["input_ids"]]
        elif stage == "rm":  # rows: chosen, rejected, chosen, rejected, ...
            proc = pairwise_mod.PairwiseDatasetProcessor(tmpl, tok, None, da)
            out = proc.preprocess_dataset(examples)
            rows = []
            for i in range(len(out["chosen_input_ids"])):
                rows.append({"input_ids": out["chosen_input_ids"][i], "labels": out["chosen_labels"][i]})
                rows.append({"input_ids": out["rejected_input_ids"][i], "labels": out["rejected_labels"][i]})
        elif stage == "sft_generate":  # predict_with_generate's eval set: prompt ids, response ids (not aligned)
            proc = unsupervised_mod.UnsupervisedDatasetProcessor(tmpl, tok, None, da)
            out = proc.preprocess_dataset(examples)
            rows = [{"input_ids": out["input_ids"][i], "label_ids": out["labels"][i]} for i in range(len(out["input_ids"]))]
        else:
            cls = supervised_mod.PackedSupervisedDatasetProcessor if da.packing else supervised_mod.SupervisedDatasetProcessor
            proc = cls(tmpl, tok, None, da)
            out = proc.preprocess_dataset(examples)
            rows = [{k: out[k][i] for k in out if k in ("input_ids", "labels", "position_ids", "attention_mask")} for i in range(len(out["input_ids"]))]
        case = {"name": name, "stage": stage, "dataset": datasets, "max_samples": max_samples,
                "eos_token": tok.eos_token, "pad_token": tok.pad_token, "vocab_size": len(tok),
                "rows": [{"ids": r["input_ids"], "label_ids": r["label_ids"]} for r in rows] if stage == "sft_generate" else encode_rows(rows)}
        case.update({k: v for k, v in opts.items()})
        cases.append(case)

    for t in TEMPLATES:
        sets = [d for d in SFT_DATASETS if not (t in NO_TOOLS and d.startswith("glaive"))]
        run(f"{t}", "sft", sets, 2, template=t, cutoff_len=256)
        multi = ["extra_sharegpt", "extra_history"] + ([] if t in NO_TOOLS else ["glaive_toolcall_en_demo"])
        run(f"{t}/cutoff40", "sft", multi, 1, template=t, cutoff_len=40)
        run(f"{t}/mask_history", "sft", multi, 1, template=t, cutoff_len=96, mask_history=True)
        if not tmpl_efficient_eos(template_mod, t):
            run(f"{t}/train_on_prompt", "sft", ["extra_sharegpt", "extra_history"], 1, template=t, cutoff_len=128, train_on_prompt=True)
    run("qwen3/no_thinking", "sft", ["extra_sharegpt", "extra_history"], 2, template="qwen3", cutoff_len=256, enable_thinking=False)
    run("qwen/tool_format_default", "sft", ["glaive_toolcall_en_demo"], 1, template="qwen", cutoff_len=256, tool_format="default")
    run("smollm2/default_system", "sft", ["alpaca_en_demo"], 1, template="smollm2", cutoff_len=256, default_system="Be brief.")
    run("jinja", "sft", ["alpaca_en_demo", "extra_sharegpt", "extra_history"], 2, template=None, cutoff_len=256)
    run("smollm2/packing", "sft", ["alpaca_en_demo", "identity", "extra_sharegpt"], 4, template="smollm2", cutoff_len=192, packing=True)
    run("qwen/neat_packing", "sft", ["alpaca_en_demo", "identity", "extra_sharegpt"], 4, template="qwen", cutoff_len=192, neat_packing=True)
    for t in ["smollm2", "qwen3", "llama3", "gemma2", "alpaca", "mistral"]:
        run(f"rm/{t}", "rm", ["dpo_en_demo"], 3, template=t, cutoff_len=256)
        run(f"rm/{t}/cutoff48", "rm", ["dpo_en_demo"], 2, template=t, cutoff_len=48)
    for t in ["smollm2", "qwen3", "llama3", "gemma2", "alpaca", "mistral"]:
        run(f"generate/{t}", "sft_generate", ["alpaca_en_demo", "extra_sharegpt", "extra_history"], 2, template=t, cutoff_len=256)
    run("generate/smollm2/cutoff40", "sft_generate", ["extra_sharegpt", "extra_history"], 1, template="smollm2", cutoff_len=40)
    run("generate/qwen3/no_thinking", "sft_generate", ["extra_sharegpt"], 2, template="qwen3", cutoff_len=256, enable_thinking=False)
    run("pt/c4", "pt", ["c4_demo"], 3, template="smollm2", cutoff_len=128)
    run("pt/wiki_llama3", "pt", ["wiki_demo"], 2, template="llama3", cutoff_len=200)
    run("pt/c4_nopacking", "pt", ["c4_demo"], 3, template="smollm2", cutoff_len=64, packing=False)

    fixture = {
        "source": "LLaMA-Factory 0.9.5 data modules via scripts/golden/llamafactory_data.py; SmolLM2-135M-Instruct tokenizer",
        "extra_datasets": EXTRA,
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {args.out}: {len(cases)} cases, {os.path.getsize(args.out)} bytes")


def tmpl_efficient_eos(template_mod, name):
    return template_mod.TEMPLATES[name].efficient_eos


if __name__ == "__main__":
    main()
