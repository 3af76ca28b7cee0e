"""Tiny Llama-family models run by HF transformers: real HF folders for the loader tests and golden logits, loss
and parameter gradients for ferrotune's decoder (crates/models/src/llama.rs).

    /work/pyref/bin/python scripts/golden/models.py   # checked by tests/models_golden.rs
    (needs torch, transformers >= 5, safetensors; CPU only)

For each case NAME below it writes
  tests/fixtures/models/NAME/{config.json, model.safetensors}   `save_pretrained` in f32 (tiny: < 200 KB)
  tests/golden/models_NAME.safetensors                           the reference, see below

Weights: HF's own init (normal(0, 0.02), unit norms, zero biases) barely exercises a model (near-uniform
attention, logits ~0), so every parameter is redrawn from a fixed generator: linear weights and embeddings
normal(0, 0.15), norm weights 1 + normal(0, 0.1), biases normal(0, 0.1). The saved folder holds exactly these
weights (f32).

The batch: two sequences of 7 and 12 tokens (`input_ids.0`, `input_ids.1`), each with `labels.*` aligned to
its input ids (-100 on the first 3 "prompt" tokens and on one later token). HF runs each sequence on its own
(batch of 1, positions 0..T), which is what ferrotune's packed batch with segment ids must reproduce.

Reference quantities (HF eager attention):
  logits        [19, V] both sequences' logits, concatenated in order (f64 run)
  loss          scalar: sum over both sequences of the cross-entropy of logits[t] against labels[t + 1]
                (HF's shift, per sequence) divided by the number of valid targets in both (f64 run). This is HF's
                ForCausalLMLoss with num_items_in_batch = None applied to the batch as a whole.
  grad.<name>   d loss / d parameter for every `named_parameters()` name (tied models list the embedding once,
                its gradient holding both the lookup and the lm_head contributions) (f64 run)
  logits_f32, loss_f32  the same from the f32 model, to show how far HF's own f32 run is from f64

The f64 run upcasts the f32 weights exactly and is made f64 *throughout*: HF's modeling code pins three steps
to f32 whatever the model dtype (the RoPE inverse frequencies and cos/sin, `.float()` / `dtype=torch.float`;
RMSNorm's `.to(torch.float32)`; eager attention's `softmax(..., dtype=torch.float32)`), which would leave ~1e-7
errors in an "f64" run. `exact_f64()` points `torch.float`, `torch.float32` and `Tensor.float` at f64 while the
f64 model runs, and the RoPE buffers are recomputed by HF's own init function under the same switch. The result
is HF's math evaluated in f64: the exact answer for the stored weights up to ~1e-15 relative. Tests compare
ferrotune's f64 run against it tightly and its f32 run with f32 tolerances.

`padded_pad` (case qwen2_tied) sets pad_token_id to a token present in the input: HF's nn.Embedding(padding_idx)
gives that embedding row no gradient from the lookup, and ferrotune reproduces that.
"""
import contextlib
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from common import save

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")
IGNORE = -100

# Shared sizes: hidden 32 with an explicit head_dim of 16 (4 heads x 16 = 64 != hidden, so head_dim is not
# hidden / heads), GQA 4 query heads on 2 kv heads, 2 layers. Small enough for a < 200 KB folder.
BASE = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)

CASES = {
    "llama_untied": (LlamaConfig, dict(tie_word_embeddings=False)),
    "llama_tied": (LlamaConfig, dict(tie_word_embeddings=True)),
    "qwen2_untied": (Qwen2Config, dict(tie_word_embeddings=False, use_sliding_window=False)),
    # pad_token_id = 5 appears in the input: its embedding row gets no lookup gradient in HF.
    "qwen2_tied": (Qwen2Config, dict(tie_word_embeddings=True, use_sliding_window=False, pad_token_id=5)),
    # llama3 rope scaling whose bands all hold some of the 8 frequencies, a non-default eps and theta, and every
    # Llama bias (attention_bias puts one on q/k/v/o, mlp_bias on gate/up/down).
    "llama_rope_bias": (
        LlamaConfig,
        dict(
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            max_position_embeddings=128,  # HF wants original_max_position_embeddings below it
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    # Mistral with a window wider than both sequences (ferrotune rejects longer ones); linear rope scaling.
    "mistral": (
        MistralConfig,
        dict(
            tie_word_embeddings=False,
            sliding_window=16,
            rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
        ),
    ),
}

SEQUENCES = [
    [1, 17, 5, 200, 33, 5, 91],
    [1, 250, 3, 3, 44, 128, 7, 5, 60, 255, 12, 2],
]


def labels_for(ids):
    labels = list(ids)
    for i in range(3):
        labels[i] = IGNORE
    labels[len(ids) - 2] = IGNORE  # an ignored target inside the answer too
    return labels


def redraw(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.15 * noise)


@contextlib.contextmanager
def exact_f64():
    """Make HF's hard-coded f32 casts (RoPE, RMSNorm, softmax) f64 casts; see the module docstring."""
    saved = torch.float, torch.float32, torch.Tensor.float
    torch.float = torch.float32 = torch.float64
    torch.Tensor.float = torch.Tensor.double
    try:
        yield
    finally:
        torch.float, torch.float32, torch.Tensor.float = saved


def recompute_rope_f64(model):
    """Recompute every rotary embedding's inv_freq with HF's own init function, in f64 (inside exact_f64)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for module in model.modules():
        if module.__class__.__name__.endswith("RotaryEmbedding"):
            init = module.compute_default_rope_parameters if module.rope_type == "default" else ROPE_INIT_FUNCTIONS[module.rope_type]
            inv_freq, scaling = init(module.config, None)
            assert inv_freq.dtype == torch.float64
            module.inv_freq = inv_freq
            module.original_inv_freq = inv_freq.clone()
            module.attention_scaling = scaling


def run(model, dtype):
    """Logits [19, V], loss and named gradients of the two-sequence batch, every op in `dtype`."""
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    logits, loss_sum, valid = [], 0.0, 0
    for ids in SEQUENCES:
        input_ids = torch.tensor([ids])
        out = model(input_ids=input_ids)
        lg = out.logits[0]
        shifted = torch.tensor(labels_for(ids)[1:] + [IGNORE])
        loss_sum = loss_sum + F.cross_entropy(lg, shifted, ignore_index=IGNORE, reduction="sum")
        valid += int((shifted != IGNORE).sum())
        logits.append(lg)
    loss = loss_sum / valid
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return torch.cat(logits).detach(), loss.detach(), grads


def main():
    torch.manual_seed(0)
    for index, (name, (config_class, overrides)) in enumerate(CASES.items()):
        config = config_class(**{**BASE, **overrides})
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        model.eval()  # no dropout (attention_dropout is 0 anyway)
        redraw(model, 1000 + index)
        if model.config.tie_word_embeddings:
            assert model.lm_head.weight is model.model.embed_tokens.weight

        folder = os.path.join(FIXTURES, name)
        os.makedirs(folder, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        assert size < 200_000, f"{name}: fixture is {size} bytes"
        # generation_config.json is not part of what ferrotune reads; keep the fixture to the two real files.
        gen_cfg = os.path.join(folder, "generation_config.json")
        if os.path.exists(gen_cfg):
            os.remove(gen_cfg)

        logits32, loss32, _ = run(model, torch.float32)
        with exact_f64():
            model.to(torch.float64)
            recompute_rope_f64(model)
            logits64, loss64, grads64 = run(model, torch.float64)
        tensors = {"logits": logits64, "loss": loss64, "logits_f32": logits32, "loss_f32": loss32}
        for i, ids in enumerate(SEQUENCES):
            tensors[f"input_ids.{i}"] = torch.tensor(ids, dtype=torch.int64)
            tensors[f"labels.{i}"] = torch.tensor(labels_for(ids), dtype=torch.int64)
        for n, g in grads64.items():
            tensors[f"grad.{n}"] = g
        print(
            f"{name}: loss f64 {loss64.item():.10f}, f32 {loss32.item():.10f}; HF f32 vs f64: logits max abs "
            f"{(logits32.double() - logits64).abs().max().item():.3e}, fixture {size} bytes"
        )
        save(f"models_{name}", tensors, {"case": name, "config": json.dumps(config.to_dict(), default=str)[:2000]})


if __name__ == "__main__":
    main()
