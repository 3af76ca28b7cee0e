"""Golden outputs of ferrotune's core tensor ops from PyTorch: elementwise (unary and broadcast binary),
reductions, layout ops, casts and the embedding gather / scatter-add.

    python scripts/golden/tensor_ops.py     # writes tests/golden/tensor_ops.safetensors; checked by tests/tensor_ops_golden.rs
"""
import torch

from common import save

torch.manual_seed(0)
t = {}

x64 = torch.randn(4, 7, dtype=torch.float64)
pos64 = torch.rand(4, 7, dtype=torch.float64) * 3 + 0.1
t["x"] = x64
t["pos"] = pos64
unary = {
    "neg": lambda a: -a,
    "exp": torch.exp,
    "tanh": torch.tanh,
    "sin": torch.sin,
    "cos": torch.cos,
    "sigmoid": torch.sigmoid,
    "silu": torch.nn.functional.silu,
    "relu": torch.relu,
    "abs": torch.abs,
    "sqr": torch.square,
}
positive_unary = {"log": torch.log, "sqrt": torch.sqrt, "recip": torch.reciprocal}
for dtype, tag in [(torch.float64, "f64"), (torch.float32, "f32"), (torch.bfloat16, "bf16")]:
    for name, f in unary.items():
        t[f"unary.{name}.{tag}"] = f(x64.to(dtype))
    for name, f in positive_unary.items():
        t[f"unary.{name}.{tag}"] = f(pos64.to(dtype))
    t[f"powf.{tag}"] = pos64.to(dtype) ** 1.7
    t[f"affine.{tag}"] = x64.to(dtype) * 0.5 + 1.25

a = torch.randn(2, 3, 4, dtype=torch.float64)
b = torch.randn(3, 1, dtype=torch.float64)
t["a"], t["b"] = a, b
for dtype, tag in [(torch.float64, "f64"), (torch.float32, "f32"), (torch.bfloat16, "bf16")]:
    aa, bb = a.to(dtype), b.to(dtype)
    t[f"binary.add.{tag}"] = aa + bb
    t[f"binary.sub.{tag}"] = aa - bb
    t[f"binary.mul.{tag}"] = aa * bb
    t[f"binary.div.{tag}"] = aa / (bb.abs() + 0.5)
    t[f"binary.maximum.{tag}"] = torch.maximum(aa, bb)
    t[f"binary.minimum.{tag}"] = torch.minimum(aa, bb)

r = torch.randn(3, 5, 6, dtype=torch.float32)
t["r"] = r
t["reduce.sum_0_2"] = r.sum(dim=(0, 2), keepdim=True)
t["reduce.sum_all"] = r.sum()
t["reduce.max_1"] = r.amax(dim=1, keepdim=True)
t["reduce.min_2"] = r.amin(dim=2, keepdim=True)
t["reduce.mean_all"] = r.mean()

t["layout.permute_201"] = r.permute(2, 0, 1).contiguous()
t["layout.narrow_1_1_3"] = r.narrow(1, 1, 3).contiguous()
t["layout.transpose_narrow_reshape"] = r.transpose(0, 2).narrow(0, 2, 4).reshape(4, 15)
t["layout.cat_1"] = torch.cat([r, r[:, :2] * 2], dim=1)

# Round-to-nearest-even casts, including values exactly between two bf16/f16 numbers.
c = torch.cat([torch.randn(64) * 100, torch.tensor([1.00390625, 1.01171875, 65504.0, 1e-8, -0.0, 3.0e38])]).to(torch.float32)
t["cast.src"] = c
t["cast.bf16"] = c.to(torch.bfloat16)
t["cast.f16"] = c.to(torch.float16)

table = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
ids = torch.tensor([[1, 3, 1], [9, 0, 1]], dtype=torch.int64)
emb = torch.nn.functional.embedding(ids, table)
gout = torch.randn(2, 3, 6, dtype=torch.float64)
emb.backward(gout)
t["emb.table"] = table.detach()
t["emb.ids"] = ids
t["emb.out"] = emb.detach()
t["emb.grad_out"] = gout
t["emb.grad_table"] = table.grad

save("tensor_ops", t)
