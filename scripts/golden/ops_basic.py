"""Golden files for the basic fused ops: RMSNorm, RoPE (tables for every rope_type, and the rotation), SwiGLU,
softmax / log-softmax. Dropout has none: its mask comes from ferrotune's own counter-based generator, so only its
distribution can match PyTorch (tested in Rust).

    python scripts/golden/ops_basic.py      # needs: pip install torch safetensors numpy transformers==5.6.0

Writes
  tests/golden/ops_basic_{f64,f32,bf16}.safetensors  inputs, outputs and autograd gradients of each op
  tests/golden/ops_basic_rope_tables.safetensors     inv_freq / attention scaling / cos / sin per rope_type

The f32 and bf16 cases run HF's own modules (LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb) in that
dtype, so bf16 goldens carry HF's intermediate roundings. HF forces f32 inside RMSNorm and the rotary tables,
so the f64 cases run the same formulas with the casts removed (transcribed below, next to the HF line they
follow), and the f64 inv_freq is a transcription of modeling_rope_utils.py checked here against HF's f32 output.
"""
import json
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from common import save

DTYPES = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.bfloat16}

# ---- RoPE configurations -----------------------------------------------------------------------------------------
# name -> (head_dim, max_position_embeddings, seq_len, rope_parameters as in an HF config.json)
ROPE_CASES = {
    "default": (32, 64, 64, {"rope_type": "default", "rope_theta": 10000.0}),
    "linear": (32, 64, 64, {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
    # Dynamic NTK below and above max_position_embeddings: HF grows theta only past it.
    "dynamic_short": (32, 64, 50, {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    "dynamic_long": (32, 64, 100, {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    # Llama 3.1 shape, scaled down so all three bands (kept, blended, divided) appear in 16 frequencies.
    "llama3": (32, 4096, 4096, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 512,
                                "rope_theta": 500000.0}),
    # YaRN with the ramp inside the 16 frequencies (dims 5..12), in its three attention-factor variants.
    "yarn": (32, 16384, 16384, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                                "beta_fast": 32.0, "beta_slow": 1.0, "rope_theta": 10000.0}),
    "yarn_mscale": (32, 16384, 16384, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                                       "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.707,
                                       "rope_theta": 10000.0}),
    "yarn_attention_factor": (32, 16384, 16384, {"rope_type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 4096, "beta_fast": 24.0,
                                                 "beta_slow": 2.0, "attention_factor": 1.5, "rope_theta": 10000.0}),
}
# Rows compared against HF's f32 cos/sin (HF evaluates only the positions it is given); the largest sets
# seq_len for dynamic NTK, as HF's max(position_ids) + 1 does.
HF_POSITIONS = [0, 1, 2, 5, 17, 33, 49]
# Rows compared against the f64 transcription: these include far positions, where f32 angles lose precision.
F64_POSITIONS = [0, 1, 7, 49, 1000, 4095]


def hf_rotary(head_dim: int, max_pos: int, params: dict) -> LlamaRotaryEmbedding:
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=max_pos, rope_parameters=dict(params))
    return LlamaRotaryEmbedding(config)


def inv_freq_f64(head_dim: int, max_pos: int, seq_len: int, p: dict) -> tuple[list[float], float]:
    """modeling_rope_utils.py (transformers 5.6.0) transcribed line by line in f64, for one rope_type."""
    dim, base, kind = head_dim, p["rope_theta"], p["rope_type"]
    default = [1.0 / base ** ((2 * i) / dim) for i in range(dim // 2)]
    if kind == "default":
        return default, 1.0
    if kind == "linear":  # inv_freq /= factor
        return [f / p["factor"] for f in default], 1.0
    if kind == "dynamic":
        factor = p["factor"]
        seq_len = max(seq_len, max_pos)
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return [1.0 / base ** ((2 * i) / dim) for i in range(dim // 2)], 1.0
    if kind == "llama3":
        factor, low, high, old = p["factor"], p["low_freq_factor"], p["high_freq_factor"], p["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old / low, old / high
        out = []
        for f in default:
            wavelen = 2 * math.pi / f
            f_llama = f / factor if wavelen > low_freq_wavelen else f
            if not wavelen < high_freq_wavelen and not wavelen > low_freq_wavelen:
                smooth = (old / wavelen - low) / (high - low)
                f_llama = (1 - smooth) * f_llama / factor + smooth * f_llama
            out.append(f_llama)
        return out, 1.0
    if kind == "yarn":
        factor, old = p["factor"], p["original_max_position_embeddings"]
        attention_factor, mscale, mscale_all_dim = p.get("attention_factor"), p.get("mscale"), p.get("mscale_all_dim")

        def get_mscale(scale, m=1):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
            else:
                attention_factor = get_mscale(factor)
        beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

        def correction_dim(rotations):
            return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        out = []
        for i in range(dim // 2):
            pos_freq = base ** ((2 * i) / dim)
            extrapolation, interpolation = 1.0 / pos_freq, 1.0 / (factor * pos_freq)
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            extrapolation_weight = 1 - ramp
            out.append(interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight)
        return out, attention_factor
    raise ValueError(kind)


def cos_sin_f64(inv_freq: list[float], scaling: float, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.tensor(inv_freq, dtype=torch.float64)
    angles = torch.tensor(positions, dtype=torch.float64)[:, None] * f[None, :]
    return angles.cos() * scaling, angles.sin() * scaling


def rope_tables() -> None:
    tensors, cases = {}, {}
    for name, (head_dim, max_pos, seq_len, params) in ROPE_CASES.items():
        rotary = hf_rotary(head_dim, max_pos, params)
        hf_positions = [p for p in HF_POSITIONS if p < seq_len]
        if params["rope_type"] == "dynamic":
            hf_positions.append(seq_len - 1)  # HF's growth trigger: max(position_ids) + 1 == seq_len
        x = torch.zeros(1, dtype=torch.float32)
        cos, sin = rotary(x, torch.tensor([hf_positions]))
        half = head_dim // 2
        inv64, scaling64 = inv_freq_f64(head_dim, max_pos, seq_len, params)
        hf_inv = rotary.inv_freq.double()
        # The transcription must agree with HF's f32 evaluation to f32 precision.
        assert torch.allclose(torch.tensor(inv64, dtype=torch.float64), hf_inv, rtol=1e-6, atol=0), name
        assert abs(scaling64 - rotary.attention_scaling) < 1e-12, name
        f64_positions = [p for p in F64_POSITIONS if p < max(seq_len, max_pos)]
        cos64, sin64 = cos_sin_f64(inv64, scaling64, f64_positions)
        tensors.update({
            f"{name}.hf_inv_freq": rotary.inv_freq.float(),
            f"{name}.hf_positions": torch.tensor(hf_positions, dtype=torch.int64),
            f"{name}.hf_cos": cos[0, :, :half].float(),  # HF duplicates the half: cat(freqs, freqs)
            f"{name}.hf_sin": sin[0, :, :half].float(),
            f"{name}.inv_freq_f64": torch.tensor(inv64, dtype=torch.float64),
            f"{name}.attention_scaling": torch.tensor([rotary.attention_scaling], dtype=torch.float64),
            f"{name}.f64_positions": torch.tensor(f64_positions, dtype=torch.int64),
            f"{name}.cos_f64": cos64,
            f"{name}.sin_f64": sin64,
        })
        cases[name] = {"head_dim": head_dim, "max_position_embeddings": max_pos, "seq_len": seq_len,
                       "rope_parameters": params}
    save("ops_basic_rope_tables", tensors, {"cases": json.dumps(cases), "transformers": transformers.__version__})


# ---- op cases ----------------------------------------------------------------------------------------------------
ROPE_OP_CASE = "yarn_mscale"  # attention_scaling != 1 exercises the scaled cos/sin
ROPE_OP_POSITIONS = [[0, 1, 2, 3, 0, 1], [7, 8, 9, 10, 11, 12]]  # a packed row restarting at 0, and an offset row


def rms_norm_reference(x, weight, eps, dtype):
    if dtype == torch.float64:
        # LlamaRMSNorm.forward without its .to(torch.float32) casts.
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + eps))
    # HF's own forward, bound to a stand-in module so the gradient lands on our leaf `weight`.
    return LlamaRMSNorm.forward(SimpleNamespace(weight=weight, variance_epsilon=eps), x)


def rope_reference(x_bthd, positions, dtype):
    """HF's rotary module and apply_rotary_pos_emb on q = x laid out [B, heads, T, D]."""
    head_dim, max_pos, seq_len, params = ROPE_CASES[ROPE_OP_CASE]
    q = x_bthd.transpose(1, 2)
    if dtype == torch.float64:
        # LlamaRotaryEmbedding.forward forces f32; the same cat(freqs, freqs).cos() * scaling in f64.
        inv, scaling = inv_freq_f64(head_dim, max_pos, seq_len, params)
        freqs = positions.double()[:, :, None] * torch.tensor(inv, dtype=torch.float64)[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * scaling, emb.sin() * scaling
    else:
        cos, sin = hf_rotary(head_dim, max_pos, params)(x_bthd, positions)
    out, _ = apply_rotary_pos_emb(q, q, cos, sin)
    return out.transpose(1, 2)


def op_cases(tag: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(20240 + list(DTYPES).index(tag))

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).requires_grad_()

    out = {}

    def record(name, inputs: dict, fn):
        y = fn(**inputs)
        grad_out = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
        (y * grad_out).sum().backward()
        out.update({f"{name}.{k}": v.detach() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        out[f"{name}.y"] = y.detach()
        out[f"{name}.grad_out"] = grad_out
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor) and v.requires_grad:
                out[f"{name}.grad_{k}"] = v.grad

    eps = 1e-6
    record("rms_norm", {"x": randn(2, 5, 48, scale=2.0), "weight": randn(48, scale=0.2, shift=1.0)},
           lambda x, weight: rms_norm_reference(x, weight, eps, dtype))
    positions = torch.tensor(ROPE_OP_POSITIONS, dtype=torch.int64)
    out["rope.positions"] = positions
    record("rope", {"x": randn(2, 6, 3, 32)}, lambda x: rope_reference(x, positions, dtype))
    # HF LlamaMLP: act_fn(gate_proj(x)) * up_proj(x) with act_fn = SiLU.
    record("swiglu", {"gate": randn(3, 40, scale=3.0), "up": randn(3, 40)}, lambda gate, up: F.silu(gate) * up)
    record("softmax", {"x": randn(4, 33, scale=3.0)}, lambda x: F.softmax(x, dim=-1))
    record("log_softmax", {"x": randn(4, 33, scale=3.0)}, lambda x: F.log_softmax(x, dim=-1))
    save(f"ops_basic_{tag}", out, {"rms_norm.eps": eps, "rope.case": ROPE_OP_CASE})


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    rope_tables()
    for tag, dtype in DTYPES.items():
        op_cases(tag, dtype)
