//! HF learning-rate schedules (`transformers/optimization.py`, transformers 5.6): the ten `lr_scheduler_type`
//! values LLaMA-Factory documents.
//!
//! All but `reduce_lr_on_plateau` are `LambdaLR`s: after `step` optimizer steps every parameter group's lr is
//! its base lr times `factor(step)`. The trainer asks for the factor of the step about to run (HF calls
//! `scheduler.step()` after each optimizer step, so the first update uses `factor(0)`).

use ferrotune_models::{bail, Result};
use std::f64::consts::PI;

/// The `lr_scheduler_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    Linear,
    Cosine,
    CosineWithRestarts,
    Polynomial,
    Constant,
    ConstantWithWarmup,
    InverseSqrt,
    ReduceLrOnPlateau,
    CosineWithMinLr,
    WarmupStableDecay,
}

impl ScheduleKind {
    pub const ALL: [(&'static str, ScheduleKind); 10] = [
        ("linear", ScheduleKind::Linear),
        ("cosine", ScheduleKind::Cosine),
        ("cosine_with_restarts", ScheduleKind::CosineWithRestarts),
        ("polynomial", ScheduleKind::Polynomial),
        ("constant", ScheduleKind::Constant),
        ("constant_with_warmup", ScheduleKind::ConstantWithWarmup),
        ("inverse_sqrt", ScheduleKind::InverseSqrt),
        ("reduce_lr_on_plateau", ScheduleKind::ReduceLrOnPlateau),
        ("cosine_with_min_lr", ScheduleKind::CosineWithMinLr),
        ("warmup_stable_decay", ScheduleKind::WarmupStableDecay),
    ];

    pub fn parse(name: &str) -> Result<ScheduleKind> {
        match ScheduleKind::ALL.iter().find(|(n, _)| *n == name) {
            Some((_, k)) => Ok(*k),
            None => {
                let names: Vec<&str> = ScheduleKind::ALL.iter().map(|(n, _)| *n).collect();
                bail!("lr_scheduler_type {name:?} is not one of {names:?}")
            }
        }
    }

    pub fn name(self) -> &'static str {
        ScheduleKind::ALL.iter().find(|(_, k)| *k == self).map(|(n, _)| *n).unwrap_or("linear")
    }
}

/// The scheduler-specific settings (HF `lr_scheduler_kwargs`), with HF's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleKwargs {
    /// cosine: 0.5; cosine_with_restarts: 1; wsd: 0.5 (`None`: the schedule's default).
    pub num_cycles: Option<f64>,
    /// polynomial: final lr (1e-7) and power (1.0).
    pub lr_end: f64,
    pub power: f64,
    /// inverse_sqrt: defaults to `num_warmup_steps or 10_000`.
    pub timescale: Option<usize>,
    /// cosine_with_min_lr: exactly one of these is required.
    pub min_lr: Option<f64>,
    pub min_lr_rate: Option<f64>,
    /// warmup_stable_decay.
    pub num_stable_steps: Option<usize>,
    pub num_decay_steps: Option<usize>,
    pub warmup_type: String,
    pub decay_type: String,
    pub min_lr_ratio: f64,
    /// reduce_lr_on_plateau (torch `ReduceLROnPlateau` defaults, mode "min", threshold_mode "rel").
    pub factor: f64,
    pub patience: usize,
    pub threshold: f64,
    pub cooldown: usize,
    pub plateau_min_lr: f64,
    pub plateau_eps: f64,
}

impl Default for ScheduleKwargs {
    fn default() -> Self {
        ScheduleKwargs {
            num_cycles: None,
            lr_end: 1e-7,
            power: 1.0,
            timescale: None,
            min_lr: None,
            min_lr_rate: None,
            num_stable_steps: None,
            num_decay_steps: None,
            warmup_type: "linear".into(),
            decay_type: "cosine".into(),
            min_lr_ratio: 0.0,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            cooldown: 0,
            plateau_min_lr: 0.0,
            plateau_eps: 1e-8,
        }
    }
}

impl ScheduleKwargs {
    /// Read HF `lr_scheduler_kwargs` (a JSON object); unknown keys are an error, as Python's `**kwargs` makes them.
    pub fn from_json(kind: ScheduleKind, v: &serde_json::Value) -> Result<ScheduleKwargs> {
        let mut k = ScheduleKwargs::default();
        let Some(map) = v.as_object() else {
            if v.is_null() {
                return Ok(k);
            }
            bail!("lr_scheduler_kwargs must be a mapping, got {v}");
        };
        let num = |key: &str, x: &serde_json::Value| -> Result<f64> {
            match x.as_f64() {
                Some(f) => Ok(f),
                None => bail!("lr_scheduler_kwargs.{key} must be a number, got {x}"),
            }
        };
        let count = |key: &str, x: &serde_json::Value| -> Result<usize> {
            match x.as_u64() {
                Some(n) => Ok(n as usize),
                None => match x.as_f64() {
                    Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as usize),
                    _ => bail!("lr_scheduler_kwargs.{key} must be a non-negative integer, got {x}"),
                },
            }
        };
        use ScheduleKind::*;
        for (key, x) in map {
            let ok = match (kind, key.as_str()) {
                (Cosine | CosineWithRestarts | CosineWithMinLr | WarmupStableDecay, "num_cycles") => {
                    k.num_cycles = Some(num(key, x)?);
                    true
                }
                (Polynomial, "lr_end") => {
                    k.lr_end = num(key, x)?;
                    true
                }
                (Polynomial, "power") => {
                    k.power = num(key, x)?;
                    true
                }
                (InverseSqrt, "timescale") => {
                    k.timescale = Some(count(key, x)?);
                    true
                }
                (CosineWithMinLr, "min_lr") => {
                    k.min_lr = Some(num(key, x)?);
                    true
                }
                (CosineWithMinLr, "min_lr_rate") => {
                    k.min_lr_rate = Some(num(key, x)?);
                    true
                }
                (WarmupStableDecay, "num_stable_steps") => {
                    k.num_stable_steps = Some(count(key, x)?);
                    true
                }
                (WarmupStableDecay, "num_decay_steps") => {
                    k.num_decay_steps = Some(count(key, x)?);
                    true
                }
                (WarmupStableDecay, "warmup_type" | "decay_type") => {
                    let Some(s) = x.as_str() else { bail!("lr_scheduler_kwargs.{key} must be a string, got {x}") };
                    if !["linear", "cosine", "1-sqrt"].contains(&s) {
                        bail!("lr_scheduler_kwargs.{key} must be one of linear, cosine, 1-sqrt; got {s:?}");
                    }
                    if key == "warmup_type" { k.warmup_type = s.into() } else { k.decay_type = s.into() }
                    true
                }
                (WarmupStableDecay, "min_lr_ratio") => {
                    k.min_lr_ratio = num(key, x)?;
                    true
                }
                (ReduceLrOnPlateau, "factor") => {
                    k.factor = num(key, x)?;
                    true
                }
                (ReduceLrOnPlateau, "patience") => {
                    k.patience = count(key, x)?;
                    true
                }
                (ReduceLrOnPlateau, "threshold") => {
                    k.threshold = num(key, x)?;
                    true
                }
                (ReduceLrOnPlateau, "cooldown") => {
                    k.cooldown = count(key, x)?;
                    true
                }
                (ReduceLrOnPlateau, "min_lr") => {
                    k.plateau_min_lr = num(key, x)?;
                    true
                }
                (ReduceLrOnPlateau, "eps") => {
                    k.plateau_eps = num(key, x)?;
                    true
                }
                _ => false,
            };
            if !ok {
                bail!("lr_scheduler_kwargs: {} does not take {key:?}", kind.name());
            }
        }
        Ok(k)
    }
}

/// A learning-rate schedule for one run: `factor(step)` times each group's base lr.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub kwargs: ScheduleKwargs,
    /// The optimizer's lr (polynomial decay and the plateau's `min_lr` are absolute lrs).
    pub base_lr: f64,
    /// Only for `reduce_lr_on_plateau`.
    pub plateau: PlateauState,
}

/// torch `ReduceLROnPlateau` (mode "min", threshold_mode "rel") state.
#[derive(Debug, Clone, PartialEq)]
pub struct PlateauState {
    /// The current factor on the base lr (starts at 1; HF builds it without warmup).
    pub scale: f64,
    pub best: f64,
    pub num_bad_epochs: usize,
    pub cooldown_counter: usize,
}

impl Default for PlateauState {
    fn default() -> Self {
        PlateauState { scale: 1.0, best: f64::INFINITY, num_bad_epochs: 0, cooldown_counter: 0 }
    }
}

impl Schedule {
    /// Checks HF's `get_scheduler` makes up front. `base_lr` is the optimizer's lr (polynomial needs it).
    pub fn new(kind: ScheduleKind, warmup_steps: usize, total_steps: usize, kwargs: ScheduleKwargs, base_lr: f64) -> Result<Schedule> {
        match kind {
            ScheduleKind::Polynomial if base_lr <= kwargs.lr_end => {
                bail!("lr_end ({}) must be smaller than initial lr ({base_lr})", kwargs.lr_end)
            }
            ScheduleKind::CosineWithMinLr => match (kwargs.min_lr, kwargs.min_lr_rate) {
                (Some(_), Some(_)) => bail!("cosine_with_min_lr: only one of min_lr or min_lr_rate should be set"),
                (None, None) => bail!(
                    "cosine_with_min_lr: one of min_lr or min_lr_rate should be set through lr_scheduler_kwargs \
                     (e.g. lr_scheduler_kwargs: {{\"min_lr_rate\": 0.1}})"
                ),
                _ => {}
            },
            _ => {}
        }
        let mut kwargs = kwargs;
        if kind == ScheduleKind::CosineWithMinLr {
            if let Some(min_lr) = kwargs.min_lr {
                kwargs.min_lr_rate = Some(min_lr / base_lr);
            }
        }
        if kind == ScheduleKind::WarmupStableDecay && kwargs.num_decay_steps.is_none() {
            // LLaMA-Factory fills the split when the user gave none: a third stable, two thirds decay.
            let rest = total_steps.saturating_sub(warmup_steps);
            let stable = kwargs.num_stable_steps.unwrap_or(rest / 3);
            kwargs.num_stable_steps = Some(stable);
            kwargs.num_decay_steps = Some(rest.saturating_sub(stable));
        }
        if kind == ScheduleKind::WarmupStableDecay && kwargs.num_stable_steps.is_none() {
            // HF `get_wsd_schedule`: what warmup and decay leave of the training steps is stable.
            let decay = kwargs.num_decay_steps.unwrap_or(0);
            kwargs.num_stable_steps = Some(total_steps.saturating_sub(warmup_steps).saturating_sub(decay));
        }
        Ok(Schedule { kind, warmup_steps, total_steps, kwargs, base_lr, plateau: PlateauState::default() })
    }

    /// The lr factor for the update that follows `step` completed optimizer steps.
    pub fn factor(&self, step: usize) -> f64 {
        let (s, w, t) = (step as f64, self.warmup_steps, self.total_steps);
        let warm = || s / (w.max(1) as f64);
        let k = &self.kwargs;
        use ScheduleKind::*;
        match self.kind {
            Constant => 1.0,
            ConstantWithWarmup => {
                if step < w { warm() } else { 1.0 }
            }
            Linear => {
                if step < w {
                    warm()
                } else {
                    (0.0f64).max((t as f64 - s) / (t.saturating_sub(w).max(1) as f64))
                }
            }
            Cosine | CosineWithRestarts | CosineWithMinLr => {
                if step < w {
                    return warm();
                }
                let progress = (s - w as f64) / (t.saturating_sub(w).max(1) as f64);
                match self.kind {
                    Cosine => {
                        let c = k.num_cycles.unwrap_or(0.5);
                        (0.0f64).max(0.5 * (1.0 + (PI * c * 2.0 * progress).cos()))
                    }
                    CosineWithRestarts => {
                        if progress >= 1.0 {
                            return 0.0;
                        }
                        let c = k.num_cycles.unwrap_or(1.0);
                        (0.0f64).max(0.5 * (1.0 + (PI * ((c * progress) % 1.0)).cos()))
                    }
                    _ => {
                        let c = k.num_cycles.unwrap_or(0.5);
                        let rate = k.min_lr_rate.unwrap_or(0.0);
                        let f = 0.5 * (1.0 + (PI * c * 2.0 * progress).cos());
                        (0.0f64).max(f * (1.0 - rate) + rate)
                    }
                }
            }
            Polynomial => {
                if step < w {
                    warm()
                } else if step > t {
                    k.lr_end / self.base_lr
                } else {
                    let lr_init = self.base_lr;
                    let lr_range = lr_init - k.lr_end;
                    let decay_steps = (t - w) as f64;
                    let pct_remaining = 1.0 - (s - w as f64) / decay_steps;
                    let decay = lr_range * pct_remaining.powf(k.power) + k.lr_end;
                    decay / lr_init
                }
            }
            InverseSqrt => {
                if step < w {
                    return warm();
                }
                let timescale = k.timescale.unwrap_or(if w > 0 { w } else { 10_000 }) as f64;
                let shift = timescale - w as f64;
                1.0 / ((s + shift) / timescale).sqrt()
            }
            ReduceLrOnPlateau => self.plateau.scale,
            WarmupStableDecay => {
                let stable = k.num_stable_steps.unwrap_or(0);
                let decay = k.num_decay_steps.unwrap_or(0);
                let shape = |kind: &str, p: f64, rising: bool| -> f64 {
                    match (kind, rising) {
                        ("cosine", true) => 0.5 * (1.0 - (PI * p).cos()),
                        ("1-sqrt", true) => 1.0 - (1.0 - p).sqrt(),
                        (_, true) => p,
                        ("cosine", false) => 0.5 * (1.0 + (PI * k.num_cycles.unwrap_or(0.5) * 2.0 * p).cos()),
                        ("1-sqrt", false) => 1.0 - p.sqrt(),
                        (_, false) => 1.0 - p,
                    }
                };
                if step < w {
                    let f = shape(&k.warmup_type, warm(), true);
                    return (0.0f64).max(f * (1.0 - k.min_lr_ratio) + k.min_lr_ratio);
                }
                if step < w + stable {
                    return 1.0;
                }
                if step < w + stable + decay {
                    let p = (s - (w + stable) as f64) / (decay.max(1) as f64);
                    let f = shape(&k.decay_type, p, false);
                    return (0.0f64).max(f * (1.0 - k.min_lr_ratio) + k.min_lr_ratio);
                }
                k.min_lr_ratio
            }
        }
    }

    /// `ReduceLROnPlateau.step(metric)` (mode "min", relative threshold): after `patience` evaluations without
    /// improving on the best by more than `threshold * |best|`, the lr is multiplied by `factor` (not below
    /// `min_lr`, and only when the change exceeds `eps`), then `cooldown` evaluations pass before counting again.
    /// With several parameter groups (LoRA+) the plateau's `min_lr` is applied to the first group's lr.
    pub fn on_evaluate(&mut self, metric: f64) {
        let base_lr = self.base_lr;
        if self.kind != ScheduleKind::ReduceLrOnPlateau {
            return;
        }
        let k = &self.kwargs;
        let st = &mut self.plateau;
        if metric < st.best * (1.0 - k.threshold) {
            st.best = metric;
            st.num_bad_epochs = 0;
        } else {
            st.num_bad_epochs += 1;
        }
        if st.cooldown_counter > 0 {
            st.cooldown_counter -= 1;
            st.num_bad_epochs = 0;
        }
        if st.num_bad_epochs > k.patience {
            let old = st.scale * base_lr;
            let new = (old * k.factor).max(k.plateau_min_lr);
            if old - new > k.plateau_eps {
                st.scale = new / base_lr;
            }
            st.cooldown_counter = k.cooldown;
            st.num_bad_epochs = 0;
        }
    }
}
