"""Two small but real tokenizers, trained offline, and transformers' ids for them.

Writes
    tests/fixtures/tokenizers/bytelevel_bpe/      Llama-3 / SmolLM style: ByteLevel BPE behind a regex Split
    tests/fixtures/tokenizers/sentencepiece_bpe/  Llama-2 style: SentencePiece-like BPE with byte_fallback, "▁"
    tests/fixtures/tokenizers/hf_ids.json         AutoTokenizer.from_pretrained(folder) ids and decodes

each folder holding tokenizer.json + tokenizer_config.json (+ chat_template.jinja for the second), as transformers
5 saves them. tests/models_tokenizer.rs checks ModelTokenizer::from_folder against hf_ids.json.

    python scripts/golden/tokenizer.py          # needs: pip install "transformers>=5.6" "tokenizers>=0.22"

Training is deterministic for a fixed tokenizers version (single-threaded, fixed corpus), so reruns reproduce the
files; the test only needs the committed ones.
"""
import json
import os
import re

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "tokenizers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog did not care about the fox at all.",
    "Tokenizers split text into pieces; models read the pieces as numbers, one embedding row per piece.",
    "Fine-tuning a small language model on a laptop is slow but it works, and it teaches you a lot.",
    "It's a truth universally acknowledged that we'll need more data, they'd say, and you've heard it before.",
    "Numbers like 2024, 3.14159 and 1,000,000 appear in text all the time; so do percentages like 42%.",
    "Rust has ownership, borrowing and lifetimes. Python has duck typing. Both have loyal users.",
    "def train(model, data):\n    for batch in data:\n        loss = model(batch)\n        loss.backward()\n",
    "Hello world! Hello there. Hello again, world: hello, hello, HELLO.",
    "The weather today is nice, the weather tomorrow will be nicer, and the weekend will be the best.",
    "我们今天学习分词。分词器把文本切成小块，模型把小块变成数字。",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "机器学习和深度学习都需要大量的数据和计算。",
    "Emoji are text too: 🙂 🦀 🔥 👍 🎉, and so are accents: café, naïve, façade, Zürich, señor.",
    "Mixed lines: learning 学习 is fun 🙂, training 训练 takes time ⏳, and tokens 词元 are everywhere.",
    "<tool_call> and </tool_call> are just text here; only the real special tokens are special.",
]
# Repeat with variation so BPE has frequent pairs to merge.
TEXT = [line for i in range(8) for line in CORPUS[i % 3 :] + CORPUS[: i % 3]]

SAMPLES = [
    "Hello world! This is a test.",
    "  leading spaces,\ttabs and\nnew lines\n\n",
    "你好，世界！今天天气很好。",
    "Emoji: 🦀🔥👍🏽 and a family 👨\u200d👩\u200d👧",
    "Mixed: Rust 1.89 编程 🦀 it's 42% done; don't panic!",
    "ÿ ü ß ñ café naïve Ωμέγα кириллица",
    "numbers 1234567 3.14159",
    "",
    " ",
]

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2_CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] "
    "+ ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def bytelevel_bpe(folder):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, min_frequency=2, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        # The object spelling transformers 4.x wrote for AddedToken values.
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True},
        "pad_token": "<|end_of_text|>",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": "{{ 'tools' }}"}],
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def sentencepiece_bpe(folder):
    # Train on Metaspace-split words, then assemble the Llama-2 layout: <unk> <s> </s>, the 256 byte tokens, then
    # the learned pieces.
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=500, min_frequency=2, limit_alphabet=80, show_progress=False)
    trainer_tok.train_from_iterator(TEXT, trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<unk>", "<s>", "</s>"]])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        # transformers 5 drops these when tokenizer.json exists (its post-processor decides); stated here to check
        # that ferrotune does the same.
        "add_bos_token": True,
        "add_eos_token": True,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    # transformers 5 saves the template here rather than in tokenizer_config.json.
    with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
        f.write(LLAMA2_CHAT)


def record(name, folder):
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    out = {
        "vocab_size": len(hf),
        "bos_token_id": hf.bos_token_id,
        "eos_token_id": hf.eos_token_id,
        "pad_token_id": hf.pad_token_id,
        "chat_template": hf.chat_template,
        "samples": [],
    }
    for text in SAMPLES + ["<|im_start|>user\nhi<|im_end|>", "<s>[INST] hi [/INST] ok</s>"]:
        with_special = hf(text, add_special_tokens=True)["input_ids"]
        without = hf(text, add_special_tokens=False)["input_ids"]
        out["samples"].append(
            {
                "text": text,
                "ids": with_special,
                "ids_no_special": without,
                "decoded": hf.decode(with_special, skip_special_tokens=False),
                "decoded_skip_special": hf.decode(with_special, skip_special_tokens=True),
            }
        )
    print(f"{name}: vocab {out['vocab_size']}, {len(out['samples'])} samples")
    return out


def main():
    folders = {"bytelevel_bpe": bytelevel_bpe, "sentencepiece_bpe": sentencepiece_bpe}
    result = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "tokenizers_by_name": {}}
    for name, build in folders.items():
        folder = os.path.join(ROOT, name)
        build(folder)
        result["tokenizers_by_name"][name] = record(name, folder)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    # One line per id list keeps the fixture reviewable.
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text)
    with open(os.path.join(ROOT, "hf_ids.json"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.relpath(ROOT)}")


if __name__ == "__main__":
    main()
