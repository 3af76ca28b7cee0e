"""Golden outputs for the GEMM behind Tensor::matmul (tests/gemm_golden.rs).

Cases (C = A @ B, computed by torch.matmul on the CPU):
- nn:      A [33, 300] @ B [300, 40], f32. k = 300 spans two of ferrotune's k blocks; m and n are not tile
           multiples.
- nt:      A [17, 50] @ Bt[29, 50].T, f32: B arrives transposed (a strided view), as in x @ W.T.
- tn:      At[50, 19].T @ B [50, 23], f32: A arrives transposed, as in a weight gradient x.T @ dy.
- bf16:    A [21, 64] @ B [64, 35] in bf16 (torch's bf16 result) and the same inputs widened to f32.
- batched: A [2, 9, 31] @ B [31, 13] (the 2-D right-hand side is shared by the batch), f32.
- f64:     A [12, 40] @ B [40, 7] in f64.

    python scripts/golden/gemm.py      # writes tests/golden/gemm.safetensors
"""
import torch

from common import save


def main():
    g = torch.Generator().manual_seed(20240601)
    randn = lambda *shape, dtype=torch.float32: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    t = {}
    t["nn.a"], t["nn.b"] = randn(33, 300), randn(300, 40)
    t["nn.out"] = torch.matmul(t["nn.a"], t["nn.b"])

    t["nt.a"], t["nt.bt"] = randn(17, 50), randn(29, 50)
    t["nt.out"] = torch.matmul(t["nt.a"], t["nt.bt"].T)

    t["tn.at"], t["tn.b"] = randn(50, 19), randn(50, 23)
    t["tn.out"] = torch.matmul(t["tn.at"].T, t["tn.b"])

    t["bf16.a"], t["bf16.b"] = randn(21, 64, dtype=torch.bfloat16), randn(64, 35, dtype=torch.bfloat16)
    t["bf16.out"] = torch.matmul(t["bf16.a"], t["bf16.b"])
    t["bf16.out_f32"] = torch.matmul(t["bf16.a"].float(), t["bf16.b"].float())

    t["batched.a"], t["batched.b"] = randn(2, 9, 31), randn(31, 13)
    t["batched.out"] = torch.matmul(t["batched.a"], t["batched.b"])

    t["f64.a"], t["f64.b"] = randn(12, 40, dtype=torch.float64), randn(40, 7, dtype=torch.float64)
    t["f64.out"] = torch.matmul(t["f64.a"], t["f64.b"])

    save("gemm", t, {"cases": "nn nt tn bf16 batched f64", "seed": 20240601})


if __name__ == "__main__":
    main()
