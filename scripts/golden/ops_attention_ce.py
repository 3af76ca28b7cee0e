"""Golden outputs and gradients of ferrotune's fused attention, cross-entropy and fused linear + cross-entropy,
from PyTorch autograd.

    python scripts/golden/ops_attention_ce.py    # checked by tests/ops_attention_ce_golden.rs

Writes, for each dtype tag in f64 / f32 / bf16:
  tests/golden/ops_attention_<tag>.safetensors   scaled_dot_product_attention cases (inputs, out, lse, grads)
  tests/golden/ops_ce_<tag>.safetensors          F.cross_entropy(ignore_index=-100), mean and sum, grad
  tests/golden/ops_ce_linear_<tag>.safetensors   cross_entropy(hidden @ weight.T), loss and both grads

Attention cases (layout [B, T, H, D] as ferrotune takes it; torch gets [B, H, T, D] views):
  gqa     causal, 3 query heads per kv head (enable_gqa), T = 140 crosses ferrotune's 128-row tile
  kvcache causal with S > T, aligned bottom-right (flash-attn's KV-cache convention) via an explicit mask,
          since torch's is_causal aligns top-left when S != T
  packed  causal + segment ids (LLaMA-Factory neat_packing): a block-diagonal causal mask
  bidir   no mask, S != T, a custom scale, head_dim 24

bf16 conventions (what each reference means):
  attention   torch's own bf16 SDPA (its CPU kernel computes in f32 from bf16 inputs, like ferrotune, but rounds
              the probabilities to bf16 before the P @ V product); lse is computed in f32 from the bf16 inputs.
  CE / FLCE   the loss HF computes for bf16 models: logits upcast to f32 before the loss
              (`logits.float()` in transformers' ForCausalLMLoss), so the reference is f32 math on the
              bf16-rounded inputs; gradients are stored in f32. `loss_mean_native` is F.cross_entropy on bf16
              logits as they are and `loss_mean_bf16_logits` the unfused bf16 lm_head (logits rounded to bf16),
              kept to show how far those paths are from the f32 one.
"""
import torch
import torch.nn.functional as F

from common import save

IGNORE = -100
DTYPES = [(torch.float64, "f64"), (torch.float32, "f32"), (torch.bfloat16, "bf16")]


def segment_ids(batch: int, seq: int) -> torch.Tensor:
    """Sorted ids of packed sequences of uneven lengths, different per batch row."""
    bounds = [[0, 6, 13], [0, 9]]
    ids = torch.zeros(batch, seq, dtype=torch.int64)
    for b in range(batch):
        for i, start in enumerate(bounds[b]):
            ids[b, start:] = i + 10 * b
    return ids


def attention_case(name, b, t, s, hq, hkv, d, causal, packed=False, scale=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = {
        "q": torch.randn(b, t, hq, d, generator=gen, dtype=torch.float64),
        "k": torch.randn(b, s, hkv, d, generator=gen, dtype=torch.float64),
        "v": torch.randn(b, s, hkv, d, generator=gen, dtype=torch.float64),
        "grad_out": torch.randn(b, t, hq, d, generator=gen, dtype=torch.float64),
    }
    # visible[b, t, s]: what ferrotune's AttentionOptions describe.
    visible = torch.ones(b, t, s, dtype=torch.bool)
    if causal:
        visible &= torch.ones(t, s, dtype=torch.bool).tril(s - t)
    seg = None
    if packed:
        seg = segment_ids(b, t)
        visible &= seg[:, :, None] == seg[:, None, :]
    meta = {f"attention.{name}.shape": [b, t, s, hq, hkv, d], f"attention.{name}.causal": int(causal),
            f"attention.{name}.scale": "default" if scale is None else repr(scale)}
    out = {}
    for dtype, tag in DTYPES:
        q, k, v = (base[x].to(dtype).detach().requires_grad_() for x in "qkv")
        grad_out = base["grad_out"].to(dtype)
        mask = visible[:, None]  # broadcast over heads
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, scale=scale, enable_gqa=True,
        ).transpose(1, 2)
        o.backward(grad_out)
        # lse from the definition, in the compute dtype (f32 for bf16), on the same (rounded) inputs.
        cd = torch.float64 if dtype == torch.float64 else torch.float32
        c = scale if scale is not None else d ** -0.5
        kk = k.detach().to(cd).repeat_interleave(hq // hkv, dim=2)
        scores = torch.einsum("bthd,bshd->bhts", q.detach().to(cd), kk) * c
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        p = f"attention.{name}."
        out[tag] = {p + "q": q.detach(), p + "k": k.detach(), p + "v": v.detach(), p + "grad_out": grad_out,
                    p + "out": o.detach(), p + "lse": lse, p + "grad_q": q.grad, p + "grad_k": k.grad,
                    p + "grad_v": v.grad}
        if seg is not None:
            out[tag][p + "segment_ids"] = seg
    return out, meta


def targets_for(n: int, vocab: int, gen) -> torch.Tensor:
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[torch.arange(n) % 4 == 1] = IGNORE  # a quarter of the rows ignored (prompt tokens)
    return y


def cross_entropy_cases():
    gen = torch.Generator().manual_seed(1)
    n, vocab = 16, 200
    logits64 = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2
    logits64[3] *= 50  # a row with a spread of hundreds: the running max matters
    logits64[5, 7] = 60.0  # one dominant logit
    y = targets_for(n, vocab, gen)
    out = {}
    for dtype, tag in DTYPES:
        stored = logits64.to(dtype)
        x = stored.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
        mean = F.cross_entropy(x, y, ignore_index=IGNORE, reduction="mean")
        total = F.cross_entropy(x, y, ignore_index=IGNORE, reduction="sum")
        mean.backward()
        out[tag] = {"ce.logits": stored, "ce.targets": y, "ce.loss_mean": mean.detach(), "ce.loss_sum": total.detach(),
                    "ce.grad_mean": x.grad, "ce.lse": torch.logsumexp(x.detach(), dim=-1)}
        if dtype == torch.bfloat16:
            out[tag]["ce.loss_mean_native"] = F.cross_entropy(stored, y, ignore_index=IGNORE).detach()
    return out


def linear_cross_entropy_cases():
    gen = torch.Generator().manual_seed(2)
    n, hidden, vocab = 16, 16, 200
    h64 = torch.randn(n, hidden, generator=gen, dtype=torch.float64)
    w64 = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * 0.5
    y = targets_for(n, vocab, gen)
    out = {}
    for dtype, tag in DTYPES:
        h_stored, w_stored = h64.to(dtype), w64.to(dtype)
        cd = torch.float64 if dtype == torch.float64 else torch.float32
        h = h_stored.to(cd).detach().requires_grad_()
        w = w_stored.to(cd).detach().requires_grad_()
        mean = F.cross_entropy(h @ w.T, y, ignore_index=IGNORE, reduction="mean")
        total = F.cross_entropy(h @ w.T, y, ignore_index=IGNORE, reduction="sum")
        mean.backward()
        out[tag] = {"flce.hidden": h_stored, "flce.weight": w_stored, "flce.targets": y,
                    "flce.loss_mean": mean.detach(), "flce.loss_sum": total.detach(),
                    "flce.grad_hidden_mean": h.grad, "flce.grad_weight_mean": w.grad}
        if dtype == torch.bfloat16:
            logits_bf16 = F.linear(h_stored, w_stored)
            out[tag]["flce.loss_mean_bf16_logits"] = F.cross_entropy(logits_bf16.float(), y, ignore_index=IGNORE).detach()
    return out


def main():
    attention = {tag: {} for _, tag in DTYPES}
    meta = {}
    for args in [
        dict(name="gqa", b=1, t=140, s=140, hq=3, hkv=1, d=6, causal=True, seed=10),
        dict(name="kvcache", b=1, t=5, s=12, hq=4, hkv=2, d=8, causal=True, seed=11),
        dict(name="packed", b=2, t=20, s=20, hq=2, hkv=2, d=8, causal=True, packed=True, seed=12),
        dict(name="bidir", b=1, t=9, s=13, hq=2, hkv=1, d=24, causal=False, scale=0.3, seed=13),
    ]:
        case, case_meta = attention_case(**args)
        for tag in case:
            attention[tag].update(case[tag])
        meta.update(case_meta)
    ce = cross_entropy_cases()
    flce = linear_cross_entropy_cases()
    for _, tag in DTYPES:
        save(f"ops_attention_{tag}", attention[tag], meta)
        save(f"ops_ce_{tag}", ce[tag], {"ignore_index": IGNORE})
        save(f"ops_ce_linear_{tag}", flce[tag], {"ignore_index": IGNORE})


if __name__ == "__main__":
    main()
