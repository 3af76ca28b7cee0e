//! Reading the command line the way `llamafactory-cli` does (`hparams/parser.py::read_args`): a `.yaml`/`.yml`
//! or `.json` file merged with `key=value` overrides, or HfArgumentParser-style `--key value` flags.

use crate::convert::ArgKind;
use crate::error::{ArgsError, Result};
use crate::value::{parse_config_text, parse_dotlist_item, Value};

/// What the argparse reader needs to know about a key.
pub(crate) struct KeyInfo {
    pub kind: ArgKind,
    /// The default is `true` (argparse then also takes `--no_<key>`).
    pub default_true: bool,
}

/// One `(key, value)` per setting, in order; later entries win. Keys the lookup does not know are kept:
/// the caller reports them.
pub(crate) fn collect(
    args: &[String],
    lookup: &dyn Fn(&str) -> Option<KeyInfo>,
) -> Result<Vec<(String, Value)>> {
    let Some(first) = args.first() else {
        return Err(ArgsError::Usage(
            "expected a config file (.yaml, .yml or .json) followed by key=value overrides, or --key value flags"
                .into(),
        ));
    };
    let lower = first.to_ascii_lowercase();
    let is_yaml = lower.ends_with(".yaml") || lower.ends_with(".yml");
    let is_json = lower.ends_with(".json");
    if !(is_yaml || is_json) {
        return parse_flags(args, lookup);
    }
    let text = std::fs::read_to_string(first).map_err(|e| ArgsError::File {
        path: first.clone(),
        message: format!("cannot read the config: {e}"),
    })?;
    let mut entries = parse_config_text(first, &text, is_json)?;
    for arg in &args[1..] {
        let (key, value) = parse_dotlist_item(arg)?;
        merge(&mut entries, key, value);
    }
    Ok(entries)
}

/// OmegaConf.merge of one override: replaces the key; `a.b=v` sets `b` inside the mapping `a`.
fn merge(entries: &mut Vec<(String, Value)>, key: String, value: Value) {
    if let Some((head, rest)) = key.split_once('.') {
        if let Some((_, existing)) = entries.iter_mut().find(|(k, _)| k == head) {
            if !matches!(existing, Value::Map(_)) {
                *existing = Value::Map(Vec::new());
            }
            if let Value::Map(inner) = existing {
                merge(inner, rest.to_string(), value);
            }
        } else {
            let mut inner = Vec::new();
            merge(&mut inner, rest.to_string(), value);
            entries.push((head.to_string(), Value::Map(inner)));
        }
        return;
    }
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => *v = value,
        None => entries.push((key, value)),
    }
}

/// HfArgumentParser's argparse: `--key value`, `--key=value`, `--flag` / `--flag false` / `--no_flag` for
/// booleans, `--key a b c` for lists. Dashes in names read as underscores (`--learning-rate`).
fn parse_flags(
    args: &[String],
    lookup: &dyn Fn(&str) -> Option<KeyInfo>,
) -> Result<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let tok = &args[i];
        i += 1;
        let Some(body) = tok.strip_prefix("--") else {
            if tok.starts_with('-') && tok.len() > 1 {
                return Err(ArgsError::Usage(format!(
                    "`{tok}`: arguments are written --key value"
                )));
            }
            if let Some((key, _)) = tok.split_once('=').filter(|(k, _)| lookup(k).is_some()) {
                // llamafactory-cli reads key=value overrides only after a config file, as here.
                return Err(ArgsError::Usage(format!(
                    "`{tok}`: key=value overrides follow a config file (cfg.yaml {tok}); without one write --{key} value"
                )));
            }
            // A stray positional: argparse leaves it unused; report it as an unknown argument.
            out.push((tok.clone(), Value::Null));
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let key = name.replace('-', "_");
        if let Some(base) = key.strip_prefix("no_") {
            if let Some(info) = lookup(base) {
                if info.kind == ArgKind::Bool && info.default_true && lookup(&key).is_none() {
                    if inline.is_some() {
                        return Err(ArgsError::Usage(format!(
                            "`{tok}`: --no_{base} takes no value"
                        )));
                    }
                    out.push((base.to_string(), Value::Bool(false)));
                    continue;
                }
            }
        }
        let Some(info) = lookup(&key) else {
            // Unknown: keep it (the caller errors or, with ALLOW_EXTRA_ARGS, ignores it) and skip its values.
            while i < args.len() && !args[i].starts_with("--") {
                i += 1;
            }
            out.push((key, Value::Null));
            continue;
        };
        let value = match (info.kind, inline) {
            (ArgKind::List, Some(v)) => Value::List(vec![Value::Str(v)]),
            (ArgKind::Bool | ArgKind::Scalar, Some(v)) => Value::Str(v),
            (ArgKind::Bool, None) => {
                if i < args.len() && !args[i].starts_with('-') {
                    i += 1;
                    Value::Str(args[i - 1].clone())
                } else {
                    Value::Bool(true)
                }
            }
            (ArgKind::List, None) => {
                let mut items = Vec::new();
                while i < args.len() && !args[i].starts_with("--") {
                    items.push(Value::Str(args[i].clone()));
                    i += 1;
                }
                if items.is_empty() {
                    return Err(ArgsError::Usage(format!(
                        "argument --{key}: expected at least one value"
                    )));
                }
                Value::List(items)
            }
            (ArgKind::Scalar, None) => {
                if i < args.len() && !args[i].starts_with("--") {
                    i += 1;
                    Value::Str(args[i - 1].clone())
                } else {
                    return Err(ArgsError::Usage(format!(
                        "argument --{key}: expected one value"
                    )));
                }
            }
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => out.push((key, value)),
        }
    }
    Ok(out)
}

/// Levenshtein distance (for "did you mean").
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate to `key`, if it is close enough to be a plausible typo.
pub(crate) fn closest<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let norm = key.replace('-', "_").to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&norm, c);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (norm.chars().count().max(c.len()) / 3).max(2);
    (d <= limit).then(|| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(k: &str) -> Option<KeyInfo> {
        match k {
            "do_train" => Some(KeyInfo {
                kind: ArgKind::Bool,
                default_true: false,
            }),
            "use_fast_tokenizer" => Some(KeyInfo {
                kind: ArgKind::Bool,
                default_true: true,
            }),
            "report_to" => Some(KeyInfo {
                kind: ArgKind::List,
                default_true: false,
            }),
            "learning_rate" | "max_steps" => Some(KeyInfo {
                kind: ArgKind::Scalar,
                default_true: false,
            }),
            _ => None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags() {
        let got = collect(
            &s(&[
                "--do_train",
                "--learning-rate",
                "1e-4",
                "--max_steps=-1",
                "--report_to",
                "a",
                "b",
                "--no_use_fast_tokenizer",
            ]),
            &lookup,
        )
        .unwrap();
        assert_eq!(got[0], ("do_train".into(), Value::Bool(true)));
        assert_eq!(got[1], ("learning_rate".into(), Value::Str("1e-4".into())));
        assert_eq!(got[2], ("max_steps".into(), Value::Str("-1".into())));
        assert_eq!(
            got[3].1,
            Value::List(vec![Value::Str("a".into()), Value::Str("b".into())])
        );
        assert_eq!(got[4], ("use_fast_tokenizer".into(), Value::Bool(false)));
        let got = collect(&s(&["--do_train", "false", "--max_steps", "-5"]), &lookup).unwrap();
        assert_eq!(got[0].1, Value::Str("false".into()));
        assert_eq!(got[1].1, Value::Str("-5".into()));
        assert!(collect(&s(&["--learning_rate"]), &lookup).is_err());
        let got = collect(&s(&["--bogus", "1", "2", "--do_train"]), &lookup).unwrap();
        assert_eq!(got[0].0, "bogus");
        assert_eq!(got[1].0, "do_train");
    }

    #[test]
    fn suggestions() {
        let keys = [
            "learning_rate",
            "lora_target",
            "lora_rank",
            "num_train_epochs",
        ];
        assert_eq!(
            closest("learnig_rate", keys.iter().copied()).as_deref(),
            Some("learning_rate")
        );
        assert_eq!(
            closest("lora_targets", keys.iter().copied()).as_deref(),
            Some("lora_target")
        );
        assert_eq!(
            closest("num-train-epochs", keys.iter().copied()).as_deref(),
            Some("num_train_epochs")
        );
        assert_eq!(closest("zzzzzzzzzzzz", keys.iter().copied()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn overrides_merge() {
        let mut e = vec![
            ("a".to_string(), Value::Int(1)),
            (
                "k".to_string(),
                Value::Map(vec![("x".into(), Value::Int(1))]),
            ),
        ];
        merge(&mut e, "a".into(), Value::Int(2));
        merge(&mut e, "k.y".into(), Value::Int(3));
        merge(&mut e, "b".into(), Value::Null);
        assert_eq!(e[0].1, Value::Int(2));
        assert_eq!(
            e[1].1,
            Value::Map(vec![
                ("x".into(), Value::Int(1)),
                ("y".into(), Value::Int(3))
            ])
        );
        assert_eq!(e[2], ("b".into(), Value::Null));
    }
}
