"""Reference values from HF transformers' training code for tests/train_schedule.rs and tests/train_optim.rs
(named peft_* with the PEFT script: the training-side golden generators).

    /work/pyref/bin/python scripts/golden/peft_trainer_refs.py
    (needs torch, transformers >= 5; CPU only)

Writes
  tests/golden/train_schedules.json   for each case (lr_scheduler_type, warmup, total, kwargs): the lr of every
        step 0..total+1 from `transformers.get_scheduler` on a one-parameter torch optimizer with lr 1e-3
        (`scheduler.get_last_lr()[0]` before each `scheduler.step()`, the lr HF uses and logs for that step).
        reduce_lr_on_plateau is driven by a fixed metric sequence instead (`metrics`).
  tests/golden/train_optim.safetensors  three updates of torch AdamW (weight_decay 0.01), HF Adafactor
        (as Trainer builds it for optim=adafactor: scale_parameter=False, relative_step=False, lr 1e-2,
        weight_decay 0.01) and torch SGD (lr 0.1, weight_decay 0.01) on a [6, 5] matrix and a [5] vector with
        fixed gradients: `p0.*`, `g{step}.*`, and `p{step}.{optim}.*` after each step (f32).
"""
import json
import os
import sys

import torch
from transformers import get_scheduler
from transformers.optimization import Adafactor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GOLDEN_DIR, save  # noqa: E402

CASES = [
    ("linear", 3, 20, {}),
    ("linear", 0, 7, {}),
    ("cosine", 4, 25, {}),
    ("cosine", 2, 10, {"num_cycles": 1.5}),
    ("cosine_with_restarts", 3, 30, {"num_cycles": 3}),
    ("polynomial", 5, 20, {"lr_end": 1e-5, "power": 2.0}),
    ("polynomial", 0, 8, {}),
    ("constant", 3, 10, {}),
    ("constant_with_warmup", 4, 12, {}),
    ("inverse_sqrt", 5, 30, {}),
    ("inverse_sqrt", 0, 10, {"timescale": 3}),
    ("cosine_with_min_lr", 3, 20, {"min_lr_rate": 0.1}),
    ("cosine_with_min_lr", 2, 15, {"min_lr": 2e-4}),
    ("warmup_stable_decay", 3, 24, {"num_decay_steps": 9}),
    ("warmup_stable_decay", 2, 20, {"num_decay_steps": 6, "num_stable_steps": 8, "decay_type": "linear", "warmup_type": "cosine", "min_lr_ratio": 0.1}),
    ("warmup_stable_decay", 4, 20, {"num_decay_steps": 10, "decay_type": "1-sqrt", "warmup_type": "1-sqrt"}),
]

PLATEAU_METRICS = [5.0, 4.0, 4.0, 3.9999, 4.1, 4.2, 4.0, 3.0, 3.5, 3.5, 3.5, 3.5]


def schedules():
    out = []
    for name, warmup, total, kwargs in CASES:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1e-3)
        sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total, scheduler_specific_kwargs=dict(kwargs))
        lrs = []
        for _ in range(total + 2):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        out.append({"name": name, "warmup": warmup, "total": total, "kwargs": kwargs, "lr": 1e-3, "lrs": lrs})
    for kwargs in [{}, {"patience": 1, "factor": 0.5, "cooldown": 1}]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1e-3)
        sched = get_scheduler("reduce_lr_on_plateau", opt, scheduler_specific_kwargs=dict(kwargs))
        lrs = []
        for m in PLATEAU_METRICS:
            sched.step(m)
            lrs.append(opt.param_groups[0]["lr"])
        out.append({"name": "reduce_lr_on_plateau", "warmup": 0, "total": 0, "kwargs": kwargs, "lr": 1e-3, "metrics": PLATEAU_METRICS, "lrs": lrs})
    path = os.path.join(GOLDEN_DIR, "train_schedules.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(path)} ({len(out)} cases)")


def optimizers():
    gen = torch.Generator().manual_seed(7)
    p0 = {"mat": torch.randn(6, 5, generator=gen), "vec": torch.randn(5, generator=gen)}
    grads = [{k: torch.randn(v.shape, generator=gen) * (0.5 + s) for k, v in p0.items()} for s in range(3)]
    tensors = {f"p0.{k}": v for k, v in p0.items()}
    for s, g in enumerate(grads):
        for k, v in g.items():
            tensors[f"g{s + 1}.{k}"] = v
    makers = {
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        "adafactor": lambda ps: Adafactor(ps, lr=1e-2, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=0.01),
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01),
    }
    for name, make in makers.items():
        params = {k: torch.nn.Parameter(v.clone()) for k, v in p0.items()}
        opt = make(list(params.values()))
        for s, g in enumerate(grads):
            for k, p in params.items():
                p.grad = g[k].clone()
            opt.step()
            for k, p in params.items():
                tensors[f"p{s + 1}.{name}.{k}"] = p.detach().clone()
    save("train_optim", tensors)


if __name__ == "__main__":
    schedules()
    optimizers()
