//! Typing a config value for one field: what `HfArgumentParser` accepts (argparse strings such as
//! `--learning_rate 1e-4` or `--do_train true`, and the YAML/JSON types), with the expected type named on error.

use crate::value::Value;
use std::ops::{Deref, DerefMut};

/// How a field reads from `--flags` (argparse mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// `--flag` alone means true; `--flag false` also works; `--no_flag` when the default is true.
    Bool,
    /// `--key a b c` (argparse `nargs="+"`).
    List,
    /// `--key value`.
    Scalar,
}

/// A field type: parsed from a [`Value`], written back as one.
pub trait ArgType: Sized {
    const KIND: ArgKind = ArgKind::Scalar;
    /// What a valid value looks like, for error messages.
    fn expected() -> String;
    /// `None` when `v` is not a valid value of this type.
    fn from_value(v: &Value) -> Option<Self>;
    fn to_value(&self) -> Value;
}

/// HF's `string_to_bool`.
fn str_to_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "t" | "y" | "1" => Some(true),
        "no" | "false" | "f" | "n" | "0" => Some(false),
        _ => None,
    }
}

impl ArgType for bool {
    const KIND: ArgKind = ArgKind::Bool;
    fn expected() -> String {
        "a boolean (true/false)".into()
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::Int(0) => Some(false),
            Value::Int(1) => Some(true),
            Value::Str(s) => str_to_bool(s.trim()),
            _ => None,
        }
    }
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}

impl ArgType for i64 {
    fn expected() -> String {
        "an integer".into()
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(*x as i64),
            Value::Str(s) => {
                let t = s.trim();
                t.parse::<i64>()
                    .ok()
                    .or_else(|| match crate::value::resolve_plain(t) {
                        Value::Int(i) => Some(i),
                        _ => None,
                    })
            }
            _ => None,
        }
    }
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ArgType for f64 {
    fn expected() -> String {
        "a number".into()
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(x) => Some(*x),
            Value::Str(s) => {
                let t = s.trim();
                t.parse::<f64>()
                    .ok()
                    .or_else(|| match crate::value::resolve_plain(t) {
                        Value::Float(x) => Some(x),
                        Value::Int(i) => Some(i as f64),
                        _ => None,
                    })
            }
            _ => None,
        }
    }
    fn to_value(&self) -> Value {
        Value::Float(*self)
    }
}

impl ArgType for String {
    fn expected() -> String {
        "a string".into()
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Str(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) => v.scalar_text(),
            _ => None,
        }
    }
    fn to_value(&self) -> Value {
        Value::Str(self.clone())
    }
}

impl<T: ArgType> ArgType for Option<T> {
    const KIND: ArgKind = T::KIND;
    fn expected() -> String {
        format!("{} or null", T::expected())
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
    fn to_value(&self) -> Value {
        match self {
            None => Value::Null,
            Some(t) => t.to_value(),
        }
    }
}

/// Dict / union arguments (`lr_scheduler_kwargs`, `vllm_config`, `deepspeed`, `fsdp`, ...): kept as given; a
/// string that starts with `{` is read as JSON, as HF's `_VALID_DICT_FIELDS` handling does.
impl ArgType for Value {
    fn expected() -> String {
        "a mapping or a JSON string".into()
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Str(s) if s.trim_start().starts_with('{') => {
                serde_json::from_str::<serde_json::Value>(s)
                    .ok()
                    .map(crate::value::from_json)
                    .filter(|v| matches!(v, Value::Map(_)))
            }
            other => Some(other.clone()),
        }
    }
    fn to_value(&self) -> Value {
        self.clone()
    }
}

/// HF list arguments (`report_to`, `label_names`): a single string becomes a one-item list.
impl ArgType for Vec<String> {
    const KIND: ArgKind = ArgKind::List;
    fn expected() -> String {
        "a string or a list of strings".into()
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Str(s) => Some(vec![s.clone()]),
            Value::List(items) => items.iter().map(String::from_value).collect(),
            _ => None,
        }
    }
    fn to_value(&self) -> Value {
        Value::List(self.iter().map(|s| Value::Str(s.clone())).collect())
    }
}

/// LLaMA-Factory's comma lists (`dataset: identity,alpaca_en_demo`, `lora_target: q_proj,v_proj`): split on
/// commas and trimmed; a YAML list is taken as is. Written back as one comma string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> CommaList {
        CommaList(items.into_iter().map(Into::into).collect())
    }
}

impl Deref for CommaList {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl DerefMut for CommaList {
    fn deref_mut(&mut self) -> &mut Vec<String> {
        &mut self.0
    }
}

impl ArgType for CommaList {
    fn expected() -> String {
        "a comma-separated string (a,b) or a list".into()
    }
    fn from_value(v: &Value) -> Option<Self> {
        let items: Vec<String> = match v {
            Value::Str(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
            Value::Int(_) | Value::Float(_) => vec![v.scalar_text()?],
            Value::List(items) => items
                .iter()
                .map(String::from_value)
                .collect::<Option<Vec<_>>>()?,
            _ => return None,
        };
        Some(CommaList(
            items.into_iter().filter(|s| !s.is_empty()).collect(),
        ))
    }
    fn to_value(&self) -> Value {
        Value::Str(self.0.join(","))
    }
}

/// A string-valued enum with LLaMA-Factory / HF spellings.
macro_rules! str_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every accepted spelling, in declaration order.
            pub const ALL: &'static [&'static str] = &[$($s),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$var),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::convert::ArgType for $name {
            fn expected() -> String {
                format!("one of {}", Self::ALL.join(", "))
            }
            fn from_value(v: &$crate::value::Value) -> Option<Self> {
                match v {
                    $crate::value::Value::Str(s) => $name::parse(s.trim()),
                    // YAML 1.1 reads an unquoted `no` as false (`save_strategy: no`); HF would then fail.
                    $crate::value::Value::Bool(false) => $name::parse("no"),
                    _ => None,
                }
            }
            fn to_value(&self) -> $crate::value::Value {
                $crate::value::Value::Str(self.as_str().to_string())
            }
        }
    };
}

str_enum! {
    /// `stage`: which training workflow runs.
    pub enum Stage { Pt = "pt", Sft = "sft", Rm = "rm", Ppo = "ppo", Dpo = "dpo", Kto = "kto" }
}

str_enum! {
    /// `finetuning_type`.
    pub enum FinetuningType { Lora = "lora", Oft = "oft", Freeze = "freeze", Full = "full" }
}

str_enum! {
    /// `lr_scheduler_type` (HF `SchedulerType`; the first ten are the ones LLaMA-Factory documents).
    pub enum SchedulerType {
        Linear = "linear",
        Cosine = "cosine",
        CosineWithRestarts = "cosine_with_restarts",
        Polynomial = "polynomial",
        Constant = "constant",
        ConstantWithWarmup = "constant_with_warmup",
        InverseSqrt = "inverse_sqrt",
        ReduceLrOnPlateau = "reduce_lr_on_plateau",
        CosineWithMinLr = "cosine_with_min_lr",
        WarmupStableDecay = "warmup_stable_decay",
        CosineWarmupWithMinLr = "cosine_warmup_with_min_lr",
        Greedy = "greedy",
    }
}

str_enum! {
    /// `eval_strategy` / `logging_strategy` (HF `IntervalStrategy`).
    pub enum IntervalStrategy { No = "no", Steps = "steps", Epoch = "epoch" }
}

str_enum! {
    /// `save_strategy` (HF `SaveStrategy`).
    pub enum SaveStrategy { No = "no", Steps = "steps", Epoch = "epoch", Best = "best" }
}

/// The optimizer a run uses, from `optim` (the HF names ferrotune implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimizer {
    /// `adamw_torch` and its aliases (`adamw_torch_fused`, `adamw_torch_xla`, `adamw_torch_npu_fused`,
    /// `adamw_apex_fused`): decoupled weight decay, `adam_beta1/2`, `adam_epsilon`.
    AdamW,
    /// `adafactor` (HF's defaults: relative step off, scale_parameter off, warmup_init off, lr from the schedule).
    Adafactor,
    /// `sgd` (plain SGD, weight decay as L2).
    Sgd,
}

/// HF `OptimizerNames` (transformers 4.55-5.6), every spelling `optim` accepts.
pub const OPTIM_NAMES: &[&str] = &[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adamw_apex_fused",
    "adafactor",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "ademamix",
    "sgd",
    "adagrad",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "ademamix_8bit",
    "lion_8bit",
    "lion_32bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "paged_ademamix_32bit",
    "paged_ademamix_8bit",
    "paged_lion_32bit",
    "paged_lion_8bit",
    "rmsprop",
    "rmsprop_bnb",
    "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise",
    "lomo",
    "adalomo",
    "grokadamw",
    "schedule_free_radam",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "apollo_adamw",
    "apollo_adamw_layerwise",
    "stable_adamw",
];

/// The `optim` names ferrotune implements (the rest are rejected by the support table).
pub const OPTIM_SUPPORTED: &[&str] = &[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adamw_apex_fused",
    "adafactor",
    "sgd",
];

impl Optimizer {
    pub fn from_optim(name: &str) -> Option<Optimizer> {
        match name {
            "adamw_torch"
            | "adamw_torch_fused"
            | "adamw_torch_xla"
            | "adamw_torch_npu_fused"
            | "adamw_apex_fused" => Some(Optimizer::AdamW),
            "adafactor" => Some(Optimizer::Adafactor),
            "sgd" => Some(Optimizer::Sgd),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(bool::from_value(&Value::Str("True".into())), Some(true));
        assert_eq!(bool::from_value(&Value::Str("n".into())), Some(false));
        assert_eq!(bool::from_value(&Value::Str("maybe".into())), None);
        assert_eq!(i64::from_value(&Value::Float(3.0)), Some(3));
        assert_eq!(i64::from_value(&Value::Float(3.5)), None);
        assert_eq!(i64::from_value(&Value::Str("-1".into())), Some(-1));
        assert_eq!(f64::from_value(&Value::Str("1e-4".into())), Some(1e-4));
        assert_eq!(f64::from_value(&Value::Int(2)), Some(2.0));
        assert_eq!(String::from_value(&Value::Bool(true)), None);
        assert_eq!(String::from_value(&Value::Int(29500)), Some("29500".into()));
        assert_eq!(
            CommaList::from_value(&Value::Str("identity, alpaca_en_demo,".into())),
            Some(CommaList::new(["identity", "alpaca_en_demo"]))
        );
        assert_eq!(
            Vec::<String>::from_value(&Value::Str("none".into())),
            Some(vec!["none".to_string()])
        );
        assert_eq!(
            Stage::from_value(&Value::Str("sft".into())),
            Some(Stage::Sft)
        );
        assert_eq!(Stage::from_value(&Value::Str("SFT".into())), None);
        assert!(SchedulerType::expected().contains("warmup_stable_decay"));
        assert_eq!(
            Value::from_value(&Value::Str("{\"min_lr\": 1e-6}".into())),
            Some(Value::Map(vec![("min_lr".into(), Value::Float(1e-6))]))
        );
        for name in OPTIM_SUPPORTED {
            assert!(OPTIM_NAMES.contains(name) && Optimizer::from_optim(name).is_some());
        }
    }
}
