"""Shared helpers for the golden-file generators.

Golden files are small safetensors files under tests/golden/, written by PyTorch (pip-installed torch, CPU) and
read by the Rust tests in tests/. They are committed; anyone can regenerate them with

    python scripts/golden/<generator>.py          # needs: pip install torch safetensors numpy

Every generator is deterministic (fixed seeds): rerunning it on the same torch version reproduces the committed
tensors bit for bit (the safetensors header may list its metadata keys in another order).
"""
import os

import torch
from safetensors.torch import save_file

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden")


def save(name: str, tensors: dict, meta: dict | None = None) -> None:
    """Write `tests/golden/<name>.safetensors`. Tensors are stored contiguous; float tensors keep their dtype."""
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    out = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"generator": "ferrotune scripts/golden", "torch": torch.__version__}
    metadata.update({k: str(v) for k, v in (meta or {}).items()})
    path = os.path.join(GOLDEN_DIR, f"{name}.safetensors")
    save_file(out, path, metadata=metadata)
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes, {len(out)} tensors)")
