"""Torch equivalents of ferrotune's kernels at the shapes of crates/kernels/examples/gpu_bench.rs, timed on GPU 0,
then the comparison table of scripts/gpu-check.sh.

    python3 scripts/gpu_bench_torch.py ferrotune.jsonl     # the gpu_bench example's output

Torch references: SDPA with the flash backend for attention (causal, bf16, GQA expanded with enable_gqa), the
eager torch ops for RMSNorm (+ residual), RoPE, SwiGLU, cross-entropy (F.cross_entropy) and torch.optim.AdamW
(fused=True, on bf16 parameters: torch keeps no f32 master copy, so it moves fewer bytes than ferrotune's step), and torch.matmul (cuBLAS) for
a GEMM row that ferrotune has no kernel for yet (cuBLASLt through the backend is not wired). Times are the best of
10 runs after a warm-up, with CUDA events. Peak figures come from the table below (dense, no sparsity); unknown
GPUs print no % column.
"""

import json
import sys

import torch
import torch.nn.functional as F

PEAKS = {  # name substring: (memory GB/s, dense bf16 TFLOP/s)
    "H200": (4800, 989),
    "H100 SXM": (3350, 989),
    "H100 PCIe": (2000, 756),
    "H100": (3350, 989),
    "A100-SXM4-80GB": (2039, 312),
    "A100": (1555, 312),
    "L40S": (864, 362),
    "RTX 4090": (1008, 165),
    "RTX 3090": (936, 71),
    "A10": (600, 125),
}


def peak_for(name):
    for key, peak in PEAKS.items():
        if key in name:
            return peak
    return None


def best_ms(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def torch_rows():
    dev, bf = "cuda", torch.bfloat16
    rows = {}
    # RMSNorm with residual: tokens x hidden.
    x, res = (torch.randn(16384, 4096, device=dev, dtype=bf) for _ in range(2))
    w = torch.randn(4096, device=dev, dtype=bf)

    def rms():
        h = x + res
        hf = h.float()
        return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(bf) * w

    rows["rms_norm_fwd+residual"] = (best_ms(rms), 4 * x.numel() * 2, 0)
    xr = x.clone().requires_grad_(True)
    wr = w.clone().requires_grad_(True)
    yr = (xr.float() * torch.rsqrt(xr.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(bf) * wr
    gy = torch.randn_like(yr)
    rows["rms_norm_bwd"] = (best_ms(lambda: torch.autograd.grad(yr, (xr, wr), gy, retain_graph=True)), 3 * x.numel() * 2, 0)
    del x, res, xr, yr, gy

    n = 16384 * 11008
    gate, up = torch.randn(n, device=dev, dtype=bf), torch.randn(n, device=dev, dtype=bf)
    rows["swiglu_fwd"] = (best_ms(lambda: F.silu(gate) * up), 3 * n * 2, 0)
    gr, ur = gate.clone().requires_grad_(True), up.clone().requires_grad_(True)
    out = F.silu(gr) * ur
    go = torch.randn_like(out)
    rows["swiglu_bwd"] = (best_ms(lambda: torch.autograd.grad(out, (gr, ur), go, retain_graph=True)), 5 * n * 2, 0)
    del gate, up, gr, ur, out, go

    q = torch.randn(16384, 32, 128, device=dev, dtype=bf)
    cos, sin = torch.randn(16384, 1, 64, device=dev), torch.randn(16384, 1, 64, device=dev)

    def rope():
        q1, q2 = q[..., :64].float(), q[..., 64:].float()
        return torch.cat((q1 * cos - q2 * sin, q2 * cos + q1 * sin), -1).to(bf)

    rows["rope_fwd"] = (best_ms(rope), 2 * q.numel() * 2, 0)
    del q

    logits = torch.randn(4096, 128256, device=dev, dtype=bf)
    targets = torch.randint(0, 128256, (4096,), device=dev)
    rows["cross_entropy_fwd"] = (best_ms(lambda: F.cross_entropy(logits.float(), targets)), logits.numel() * 2, 0)
    lr_ = logits.clone().requires_grad_(True)
    loss = F.cross_entropy(lr_.float(), targets)
    rows["cross_entropy_bwd"] = (best_ms(lambda: torch.autograd.grad(loss, lr_, retain_graph=True)), 2 * logits.numel() * 2, 0)
    del logits, lr_, loss

    p = torch.zeros(100_000_000, device=dev, dtype=bf, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
    rows["adamw_bf16_master"] = (best_ms(opt.step), p.numel() * (2 * 2 + 2 + 2 * 2 * 2), 0)
    del p, opt

    for seq in (2048, 4096):
        q = torch.randn(1, 32, seq, 128, device=dev, dtype=bf, requires_grad=True)
        k = torch.randn(1, 8, seq, 128, device=dev, dtype=bf, requires_grad=True)
        v = torch.randn(1, 8, seq, 128, device=dev, dtype=bf, requires_grad=True)
        flops = 2.0 * 32 * seq * seq * 128
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            rows[f"flash_attention_fwd seq {seq}"] = (best_ms(fwd), 0, flops)
            o = fwd()
            go = torch.randn_like(o)
            rows[f"flash_attention_bwd seq {seq}"] = (best_ms(lambda: torch.autograd.grad(o, (q, k, v), go, retain_graph=True)), 0, 2.5 * flops)
    a, b = torch.randn(16384, 4096, device=dev, dtype=bf), torch.randn(4096, 4096, device=dev, dtype=bf)
    rows["gemm 16384x4096x4096 (torch only)"] = (best_ms(lambda: a @ b), 0, 2.0 * 16384 * 4096 * 4096)
    return rows


def main():
    ours = {}
    for line in open(sys.argv[1]):
        r = json.loads(line)
        key = r["kernel"]
        if key.startswith("flash_attention"):
            key += " seq " + r["shape"].split()[1]
        ours[key] = r
    name = torch.cuda.get_device_name(0)
    peak = peak_for(name)
    theirs = torch_rows()
    print(f"\nGPU: {name}" + (f" (peak {peak[0]} GB/s, {peak[1]} bf16 TFLOP/s dense)" if peak else " (peak unknown)"))
    header = f"{'kernel':36} {'ferrotune ms':>12} {'torch ms':>10} {'speedup':>8} {'ferrotune':>16} {'% peak':>7}"
    print(header)
    print("-" * len(header))
    for key in list(dict.fromkeys(list(ours) + list(theirs))):
        r = ours.get(key)
        t = theirs.get(key)
        ms = r["ms"] if r else None
        rate, pct = "", ""
        if r:
            if r["flops"]:
                rate = f"{r['flops'] / ms / 1e9:.1f} TFLOP/s"
                pct = f"{100 * r['flops'] / ms / 1e9 / peak[1]:.0f}%" if peak else ""
            elif r["bytes"]:
                rate = f"{r['bytes'] / ms / 1e6:.0f} GB/s"
                pct = f"{100 * r['bytes'] / ms / 1e6 / peak[0]:.0f}%" if peak else ""
        speed = f"{t[0] / ms:.2f}x" if (r and t) else ""
        print(f"{key:36} {ms if ms is not None else float('nan'):12.3f} {t[0] if t else float('nan'):10.3f} {speed:>8} {rate:>16} {pct:>7}")


if __name__ == "__main__":
    main()
