"""PEFT LoRA on the tiny HF fixtures: loss and the gradients of every lora_A / lora_B (and modules_to_save)
parameter, for tests/train_lora.rs.

    /work/pyref/bin/python scripts/golden/peft_lora.py                # writes tests/golden/train_peft_*.safetensors
    /work/pyref/bin/python scripts/golden/peft_lora.py --check DIR    # loads a ferrotune-saved adapter with PEFT
    (needs torch, transformers >= 5, peft, safetensors; CPU only)

Cases (fixture, LoraConfig):
  all      llama_untied, r=4, lora_alpha=16, target_modules = all seven projections
  rslora   qwen2_untied (q/k/v biases), r=2, lora_alpha=3, use_rslora, target q_proj,v_proj,
           modules_to_save=["lm_head"]

PEFT initialises B to zeros (so every lora_A gradient would be 0): both A and B are redrawn here from a fixed
generator (A ~ U(-1/sqrt(in), 1/sqrt(in)) as kaiming_uniform(a=sqrt(5)) gives, B ~ normal(0, 0.1)) and stored in
the golden file, which the test loads into ferrotune's LoRA branches.

The batch is models.py's: two sequences run one at a time (HF's view of ferrotune's packed row with segment ids),
loss = sum of token losses over both / number of valid targets. Run in f64 throughout (models.exact_f64), so the
comparison is tight. Stored: `loss`, `lora.<peft name>` (the A/B values), `grad.<peft name>` for every trainable
parameter (`get_peft_model_state_dict` names, adapter name removed), and in the metadata the PEFT state-dict key
list (`peft_keys`) and the adapter_config.json PEFT writes (`adapter_config`).

--check DIR: PeftModel.from_pretrained(base fixture, DIR) must load without missing/unexpected keys; prints the
f64 loss of the batch (merged and unmerged) for comparison with the value the Rust test printed.
"""
import json
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save  # noqa: E402
from models import FIXTURES, IGNORE, SEQUENCES, exact_f64, labels_for, recompute_rope_f64  # noqa: E402

CASES = {
    "all": ("llama_untied", dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    "rslora": ("qwen2_untied", dict(r=2, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])),
}


def batch_loss(model):
    loss_sum, valid = 0.0, 0
    for ids in SEQUENCES:
        out = model(input_ids=torch.tensor([ids]))
        shifted = torch.tensor(labels_for(ids)[1:] + [IGNORE])
        loss_sum = loss_sum + F.cross_entropy(out.logits[0], shifted, ignore_index=IGNORE, reduction="sum")
        valid += int((shifted != IGNORE).sum())
    return loss_sum / valid


def strip_adapter(name):
    return name.replace(".default", "")


def main():
    for case_index, (case, (fixture, cfg)) in enumerate(CASES.items()):
        base = AutoModelForCausalLM.from_pretrained(os.path.join(FIXTURES, fixture), dtype=torch.float32, attn_implementation="eager")
        base.eval()
        model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **cfg))
        gen = torch.Generator().manual_seed(2000 + case_index)
        values = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    bound = 1.0 / p.shape[1] ** 0.5
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
                elif "lora_B" in name:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                if p.requires_grad:
                    values[strip_adapter(name)] = p.detach().clone()
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            with open(os.path.join(tmp, "adapter_config.json")) as f:
                adapter_config = json.load(f)
            saved_keys = sorted(get_peft_model_state_dict(model).keys())
        with exact_f64():
            model.to(torch.float64)
            recompute_rope_f64(model)
            model.zero_grad(set_to_none=True)
            loss = batch_loss(model)
            loss.backward()
        tensors = {"loss": loss.detach()}
        for name, p in model.named_parameters():
            if p.requires_grad:
                tensors[f"grad.{strip_adapter(name)}"] = p.grad.detach().clone()
        for name, v in values.items():
            tensors[f"value.{name}"] = v.double()
        print(f"{case}: loss {loss.item():.12f}, {len(values)} trainable tensors, saved keys {len(saved_keys)}")
        save(
            f"train_peft_{case}",
            tensors,
            {"fixture": fixture, "peft_keys": json.dumps(saved_keys), "adapter_config": json.dumps(adapter_config), "peft": __import__("peft").__version__},
        )


def check(adapter_dir):
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    fixture = cfg["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(fixture, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter_dir)
    from safetensors.torch import load_file

    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    state = get_peft_model_state_dict(model)
    missing = sorted(set(state) - set(saved))
    unexpected = sorted(set(saved) - set(state))
    same = all(torch.equal(state[k], saved[k]) for k in saved if k in state)
    with torch.no_grad(), exact_f64():
        model.to(torch.float64)
        recompute_rope_f64(model)
        loss = batch_loss(model).item()
        merged = model.merge_and_unload()
        loss_merged = batch_loss(merged).item()
    print(json.dumps({"missing": missing, "unexpected": unexpected, "values_loaded": same, "loss_f64": loss, "loss_merged_f64": loss_merged}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        main()
