//! Learning-rate schedules and optimizer updates against HF transformers 5.6 / torch 2.15
//! (scripts/golden/peft_trainer_refs.py).

mod common;

use common::load_golden;
use ferrotune_autograd::Var;
use ferrotune_tensor::{DType, Tensor};
use ferrotune_train::optim::{Optimizer, OptimizerConfig, OptimizerKind, ParamGroup};
use ferrotune_train::schedule::{Schedule, ScheduleKind, ScheduleKwargs};

#[test]
fn every_scheduler_matches_transformers() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/train_schedules.json");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let kind = ScheduleKind::parse(name).unwrap();
        seen.insert(name.to_string());
        let (warmup, total) = (case["warmup"].as_u64().unwrap() as usize, case["total"].as_u64().unwrap() as usize);
        let base = case["lr"].as_f64().unwrap();
        let kwargs = ScheduleKwargs::from_json(kind, &case["kwargs"]).unwrap();
        let mut s = Schedule::new(kind, warmup, total, kwargs, base).unwrap();
        let want: Vec<f64> = case["lrs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        if kind == ScheduleKind::ReduceLrOnPlateau {
            let metrics: Vec<f64> = case["metrics"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            for (i, (m, w)) in metrics.iter().zip(&want).enumerate() {
                s.on_evaluate(*m);
                let got = base * s.factor(0);
                assert!((got - w).abs() <= 1e-15 + 1e-12 * w.abs(), "{name} {:?} eval {i}: {got} vs {w}", case["kwargs"]);
            }
            continue;
        }
        for (step, w) in want.iter().enumerate() {
            let got = base * s.factor(step);
            assert!((got - w).abs() <= 1e-18 + 1e-12 * w.abs(), "{name} {:?} step {step}: {got} vs HF {w}", case["kwargs"]);
        }
    }
    assert_eq!(seen.len(), 10, "all ten schedules are covered: {seen:?}");
}

#[test]
fn scheduler_settings_are_checked() {
    let k = ScheduleKwargs::default();
    assert!(Schedule::new(ScheduleKind::CosineWithMinLr, 0, 10, k.clone(), 1e-3).is_err());
    assert!(Schedule::new(ScheduleKind::Polynomial, 0, 10, ScheduleKwargs { lr_end: 1e-2, ..k.clone() }, 1e-3).is_err());
    assert!(ScheduleKind::parse("cosine_annealing").is_err());
    let bad = serde_json::json!({"num_cycles": 2});
    assert!(ScheduleKwargs::from_json(ScheduleKind::Linear, &bad).is_err(), "linear takes no num_cycles");
}

#[test]
fn optimizers_match_torch_and_hf() {
    let (g, _) = load_golden("train_optim");
    let kinds = [("adamw", OptimizerKind::AdamW, 1e-2), ("adafactor", OptimizerKind::Adafactor, 1e-2), ("sgd", OptimizerKind::Sgd, 0.1)];
    for (name, kind, lr) in kinds {
        let keys = ["mat", "vec"];
        let specs: Vec<(String, Vec<usize>, ParamGroup)> = keys
            .iter()
            .map(|k| (k.to_string(), g[&format!("p0.{k}")].shape().to_vec(), ParamGroup { lr_multiplier: 1.0, weight_decay: 0.01 }))
            .collect();
        let mut opt = Optimizer::new(OptimizerConfig { kind, ..OptimizerConfig::default() }, &specs);
        let mut vars: Vec<Var> = keys.iter().map(|k| Var::param(g[&format!("p0.{k}")].clone())).collect();
        for step in 1..=3 {
            // Put the golden gradient on each leaf: d(sum(p * g))/dp = g.
            for (k, v) in keys.iter().zip(&vars) {
                let grad = Var::constant(g[&format!("g{step}.{k}")].clone());
                v.mul(&grad).unwrap().sum_all().unwrap().backward().unwrap();
            }
            let mut named: Vec<(String, &mut Var)> = keys.iter().map(|k| k.to_string()).zip(vars.iter_mut()).collect();
            opt.step(&mut named, lr, 1.0).unwrap();
            for (k, v) in keys.iter().zip(&vars) {
                let want = g[&format!("p{step}.{name}.{k}")].to_vec_f64().unwrap();
                let got = v.value().to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
                let worst = got.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs() / (1.0 + b.abs())));
                assert!(worst < 2e-6, "{name} step {step} {k}: worst relative error {worst:e}");
            }
        }
    }
}

#[test]
fn clipping_uses_the_global_norm() {
    let a = Var::param(Tensor::from_vec(vec![0.0f32; 2], &[2]).unwrap());
    let b = Var::param(Tensor::from_vec(vec![0.0f32; 1], &[1]).unwrap());
    let ga = Var::constant(Tensor::from_vec(vec![3.0f32, 0.0], &[2]).unwrap());
    let gb = Var::constant(Tensor::from_vec(vec![4.0f32], &[1]).unwrap());
    a.mul(&ga).unwrap().sum_all().unwrap().add(&b.mul(&gb).unwrap().sum_all().unwrap()).unwrap().backward().unwrap();
    let params = vec![("a".to_string(), a), ("b".to_string(), b)];
    let (norm, coef) = ferrotune_train::optim::grad_norm_and_clip(&params, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    assert!((coef - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
    assert_eq!(ferrotune_train::optim::grad_norm_and_clip(&params, 10.0).unwrap().1, 1.0);
    assert_eq!(ferrotune_train::optim::grad_norm_and_clip(&params, 0.0).unwrap().1, 1.0);
}
