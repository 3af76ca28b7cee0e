//! The trainer's files in LLaMA-Factory's formats, written atomically (temp file + rename):
//!
//! - `trainer_log.jsonl`: LLaMA-Factory's `LogCallback` lines (`current_steps`, `total_steps`, `loss`,
//!   `eval_loss`, `predict_loss`, `reward`, `accuracy`, `lr`, `epoch`, `percentage`, `elapsed_time`,
//!   `remaining_time`, `throughput`, `total_tokens`), as Python's `json.dumps` prints them;
//! - `trainer_state.json`: HF `TrainerState.save_to_json` (sorted keys, indent 2);
//! - `{split}_results.json` and `all_results.json`: HF `Trainer.save_metrics` (sorted keys, indent 4);
//! - the `***** train metrics *****` block of `log_metrics`, and a terminal progress line.
//!
//! JSON is written with Python's conventions (`1e-05`, `3.0`, `NaN`, `\uXXXX` escapes) so files match
//! LLaMA-Factory's byte for byte where the values match.

use crate::value::Value;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `trainer_log.jsonl`.
pub const TRAINER_LOG: &str = "trainer_log.jsonl";
/// `trainer_state.json`.
pub const TRAINER_STATE_NAME: &str = "trainer_state.json";

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so readers (the WebUI
/// polling the log) never see a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------------------
// Python's json.dumps

/// Python's `repr(float)`: shortest round-trip digits; fixed notation for exponents in [-4, 16), else
/// `d.ddde±XX`; `NaN`, `Infinity`, `-Infinity` as `json.dumps` writes them.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", x.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            if n > exp + 1 {
                format!(
                    "{}.{}",
                    &digits[..(exp + 1) as usize],
                    &digits[(exp + 1) as usize..]
                )
            } else {
                format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// Python's `round(x, ndigits)` (round-half-even on the exact binary value, as Rust's formatting does).
pub fn py_round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.ndigits$}").parse().unwrap_or(x)
}

fn py_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `json.dumps(v, indent=indent, sort_keys=sort_keys)` (default `ensure_ascii=True`).
pub fn py_json(v: &Value, indent: Option<usize>, sort_keys: bool) -> String {
    let mut out = String::new();
    write_py_json(v, indent, sort_keys, 0, &mut out);
    out
}

fn write_py_json(v: &Value, indent: Option<usize>, sort: bool, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(x) => out.push_str(&py_float(*x)),
        Value::Str(s) => py_str(s, out),
        Value::List(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                write_py_json(item, indent, sort, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Map(entries) => {
            if entries.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut order: Vec<&(String, Value)> = entries.iter().collect();
            if sort {
                order.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (k, item)) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                py_str(k, out);
                out.push_str(": ");
                write_py_json(item, indent, sort, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

/// Reads JSON as Python's `json.load` does, `NaN` / `Infinity` / `-Infinity` included.
pub fn read_py_json(text: &str) -> Result<Value, String> {
    // serde_json has no NaN/Infinity: map those bare tokens (outside strings) to sentinel strings first.
    const NAN: &str = "\"\\u0000NaN\"";
    const INF: &str = "\"\\u0000Infinity\"";
    const NINF: &str = "\"\\u0000-Infinity\"";
    let mut s = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            s.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        } else if let Some((tok, rep)) = [("-Infinity", NINF), ("Infinity", INF), ("NaN", NAN)]
            .into_iter()
            .find(|(t, _)| rest.starts_with(t))
        {
            s.push_str(rep);
            rest = &rest[tok.len()..];
            continue;
        }
        s.push(c);
        rest = &rest[c.len_utf8()..];
    }
    let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| e.to_string())?;
    fn fix(v: Value) -> Value {
        match v {
            Value::Str(s) if s.starts_with('\u{0}') => match &s[1..] {
                "NaN" => Value::Float(f64::NAN),
                "Infinity" => Value::Float(f64::INFINITY),
                _ => Value::Float(f64::NEG_INFINITY),
            },
            Value::List(items) => Value::List(items.into_iter().map(fix).collect()),
            Value::Map(entries) => {
                Value::Map(entries.into_iter().map(|(k, v)| (k, fix(v))).collect())
            }
            other => other,
        }
    }
    Ok(fix(crate::value::from_json(v)))
}

// ---------------------------------------------------------------------------------------------------------
// trainer_log.jsonl (LLaMA-Factory's LogCallback)

/// Python's `str(timedelta(seconds=int(secs)))`: `0:01:23`, `1 day, 2:03:04`.
pub fn format_duration(secs: f64) -> String {
    let total = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    let (days, rem) = (total / 86_400, total % 86_400);
    let hms = format!("{}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

/// What the trainer logged at one step (the last `log_history` entry, in the keys LogCallback reads).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogEntry {
    pub loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub predict_loss: Option<f64>,
    pub reward: Option<f64>,
    /// `rewards/accuracies` in the log history.
    pub accuracy: Option<f64>,
    /// `learning_rate` in the log history.
    pub lr: Option<f64>,
    pub epoch: Option<f64>,
}

/// Writes `trainer_log.jsonl` as LLaMA-Factory's `LogCallback` does.
#[derive(Debug)]
pub struct TrainerLog {
    path: PathBuf,
    lines: String,
    start: Instant,
    cur_steps: u64,
    max_steps: u64,
    elapsed_time: String,
    remaining_time: String,
    /// Whether the last `timing` came from training (prediction progress lines are only for eval-only runs).
    do_train: bool,
}

impl TrainerLog {
    /// Opens the log in `output_dir`. With `overwrite_output_dir` a previous log is deleted (LogCallback's
    /// `on_init_end`); otherwise new lines are appended to it (a resumed run).
    pub fn new(output_dir: &Path, overwrite_output_dir: bool) -> io::Result<TrainerLog> {
        let path = output_dir.join(TRAINER_LOG);
        let lines = if overwrite_output_dir {
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            String::new()
        } else {
            match std::fs::read_to_string(&path) {
                Ok(s) if s.is_empty() || s.ends_with('\n') => s,
                Ok(s) => s + "\n",
                Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e),
            }
        };
        Ok(TrainerLog {
            path,
            lines,
            start: Instant::now(),
            cur_steps: 0,
            max_steps: 0,
            elapsed_time: String::new(),
            remaining_time: String::new(),
            do_train: false,
        })
    }

    /// `on_train_begin`: restarts the clock for a run of `max_steps` optimizer steps.
    pub fn on_train_begin(&mut self, max_steps: u64) {
        self.do_train = true;
        self.reset(max_steps);
    }

    fn reset(&mut self, max_steps: u64) {
        self.start = Instant::now();
        self.cur_steps = 0;
        self.max_steps = max_steps;
        self.elapsed_time.clear();
        self.remaining_time.clear();
    }

    fn timing(&mut self, cur_steps: u64) -> f64 {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.timing_at(cur_steps, elapsed)
    }

    fn timing_at(&mut self, cur_steps: u64, elapsed: f64) -> f64 {
        let avg = if cur_steps != 0 {
            elapsed / cur_steps as f64
        } else {
            0.0
        };
        let remaining = (self.max_steps as f64 - cur_steps as f64) * avg;
        self.cur_steps = cur_steps;
        self.elapsed_time = format_duration(elapsed);
        self.remaining_time = format_duration(remaining);
        elapsed
    }

    fn percentage(&self) -> Value {
        if self.max_steps != 0 {
            Value::Float(py_round(
                self.cur_steps as f64 / self.max_steps as f64 * 100.0,
                2,
            ))
        } else {
            Value::Int(100)
        }
    }

    /// `on_log`: one line for `global_step`. `num_input_tokens_seen` adds `throughput` (tokens per second since
    /// `on_train_begin`, 2 decimals) and `total_tokens` when non-zero. Returns the line's fields.
    pub fn on_log(
        &mut self,
        global_step: u64,
        entry: &LogEntry,
        num_input_tokens_seen: u64,
    ) -> io::Result<Value> {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.on_log_at(global_step, entry, num_input_tokens_seen, elapsed)
    }

    /// [`TrainerLog::on_log`] with the seconds since `on_train_begin` given (deterministic tests, replays).
    pub fn on_log_at(
        &mut self,
        global_step: u64,
        entry: &LogEntry,
        num_input_tokens_seen: u64,
        elapsed_secs: f64,
    ) -> io::Result<Value> {
        let elapsed = self.timing_at(global_step, elapsed_secs);
        let mut fields: Vec<(String, Value)> = vec![
            ("current_steps".into(), Value::Int(self.cur_steps as i64)),
            ("total_steps".into(), Value::Int(self.max_steps as i64)),
        ];
        let opt = |k: &str, v: Option<f64>| v.map(|x| (k.to_string(), Value::Float(x)));
        fields.extend(
            [
                opt("loss", entry.loss),
                opt("eval_loss", entry.eval_loss),
                opt("predict_loss", entry.predict_loss),
                opt("reward", entry.reward),
                opt("accuracy", entry.accuracy),
                opt("lr", entry.lr),
                opt("epoch", entry.epoch),
            ]
            .into_iter()
            .flatten(),
        );
        fields.push(("percentage".into(), self.percentage()));
        fields.push(("elapsed_time".into(), Value::Str(self.elapsed_time.clone())));
        fields.push((
            "remaining_time".into(),
            Value::Str(self.remaining_time.clone()),
        ));
        if num_input_tokens_seen > 0 {
            let tp = if elapsed > 0.0 {
                num_input_tokens_seen as f64 / elapsed
            } else {
                0.0
            };
            fields.push(("throughput".into(), Value::Float(py_round(tp, 2))));
            fields.push((
                "total_tokens".into(),
                Value::Int(num_input_tokens_seen as i64),
            ));
        }
        let line = Value::Map(fields);
        self.append(&line)?;
        Ok(line)
    }

    /// `on_prediction_step` in an evaluation-only run: a progress line every 5 batches of `total`, and one for the
    /// last batch. LLaMA-Factory writes only every 5th, so its progress stops short of the end unless `total` is a
    /// multiple of 5 (its WebUI hides the bar when the run ends); ferrotune's WebUI shows the bar at 100% instead.
    pub fn on_prediction_step(&mut self, total: u64) -> io::Result<Option<Value>> {
        if self.do_train {
            return Ok(None);
        }
        if self.max_steps == 0 {
            self.reset(total);
        }
        let next = self.cur_steps + 1;
        self.timing(next);
        if !self.cur_steps.is_multiple_of(5) && self.cur_steps != self.max_steps {
            return Ok(None);
        }
        let line = Value::Map(vec![
            ("current_steps".into(), Value::Int(self.cur_steps as i64)),
            ("total_steps".into(), Value::Int(self.max_steps as i64)),
            ("percentage".into(), self.percentage()),
            ("elapsed_time".into(), Value::Str(self.elapsed_time.clone())),
            (
                "remaining_time".into(),
                Value::Str(self.remaining_time.clone()),
            ),
        ]);
        self.append(&line)?;
        Ok(Some(line))
    }

    fn append(&mut self, line: &Value) -> io::Result<()> {
        self.lines.push_str(&py_json(line, None, false));
        self.lines.push('\n');
        write_atomic(&self.path, self.lines.as_bytes())
    }

    /// The elapsed and remaining time strings of the last line.
    pub fn times(&self) -> (&str, &str) {
        (&self.elapsed_time, &self.remaining_time)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------------------------------------
// trainer_state.json (HF TrainerState)

/// HF `TrainerState`, saved as `trainer_state.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerState {
    pub epoch: f64,
    pub global_step: u64,
    pub max_steps: u64,
    pub logging_steps: u64,
    pub eval_steps: u64,
    pub save_steps: u64,
    pub train_batch_size: Option<u64>,
    /// `ceil(num_train_epochs)`, as HF stores it.
    pub num_train_epochs: u64,
    pub num_input_tokens_seen: u64,
    pub total_flos: f64,
    /// One mapping per `Trainer.log` call: the logged values plus `epoch` and `step`.
    pub log_history: Vec<Vec<(String, Value)>>,
    pub best_metric: Option<f64>,
    pub best_global_step: Option<u64>,
    pub best_model_checkpoint: Option<String>,
    /// `TrainerControl`'s flags as HF saves them in `stateful_callbacks`.
    pub should_training_stop: bool,
    pub should_epoch_stop: bool,
    pub should_save: bool,
    pub should_evaluate: bool,
    pub should_log: bool,
}

impl Default for TrainerState {
    fn default() -> Self {
        TrainerState {
            epoch: 0.0,
            global_step: 0,
            max_steps: 0,
            logging_steps: 500,
            eval_steps: 500,
            save_steps: 500,
            train_batch_size: None,
            num_train_epochs: 0,
            num_input_tokens_seen: 0,
            total_flos: 0.0,
            log_history: Vec::new(),
            best_metric: None,
            best_global_step: None,
            best_model_checkpoint: None,
            should_training_stop: false,
            should_epoch_stop: false,
            should_save: false,
            should_evaluate: false,
            should_log: false,
        }
    }
}

fn opt_int(v: Option<u64>) -> Value {
    v.map_or(Value::Null, |x| Value::Int(x as i64))
}

impl TrainerState {
    /// HF `Trainer.log`: appends `logs` plus `epoch` and `step` to `log_history`; returns the entry.
    pub fn log(&mut self, mut logs: Vec<(String, Value)>) -> &[(String, Value)] {
        logs.retain(|(k, _)| k != "epoch" && k != "step");
        logs.push(("epoch".into(), Value::Float(self.epoch)));
        logs.push(("step".into(), Value::Int(self.global_step as i64)));
        self.log_history.push(logs);
        self.log_history.last().map(Vec::as_slice).unwrap_or(&[])
    }

    /// The state as HF's `dataclasses.asdict` gives it.
    pub fn to_value(&self) -> Value {
        let b = Value::Bool;
        Value::Map(vec![
            ("best_global_step".into(), opt_int(self.best_global_step)),
            (
                "best_metric".into(),
                self.best_metric.map_or(Value::Null, Value::Float),
            ),
            (
                "best_model_checkpoint".into(),
                self.best_model_checkpoint
                    .clone()
                    .map_or(Value::Null, Value::Str),
            ),
            ("epoch".into(), Value::Float(self.epoch)),
            ("eval_steps".into(), Value::Int(self.eval_steps as i64)),
            ("global_step".into(), Value::Int(self.global_step as i64)),
            ("is_hyper_param_search".into(), b(false)),
            ("is_local_process_zero".into(), b(true)),
            ("is_world_process_zero".into(), b(true)),
            (
                "log_history".into(),
                Value::List(
                    self.log_history
                        .iter()
                        .map(|e| Value::Map(e.clone()))
                        .collect(),
                ),
            ),
            (
                "logging_steps".into(),
                Value::Int(self.logging_steps as i64),
            ),
            ("max_steps".into(), Value::Int(self.max_steps as i64)),
            (
                "num_input_tokens_seen".into(),
                Value::Int(self.num_input_tokens_seen as i64),
            ),
            (
                "num_train_epochs".into(),
                Value::Int(self.num_train_epochs as i64),
            ),
            ("save_steps".into(), Value::Int(self.save_steps as i64)),
            (
                "stateful_callbacks".into(),
                Value::Map(vec![(
                    "TrainerControl".into(),
                    Value::Map(vec![
                        (
                            "args".into(),
                            Value::Map(vec![
                                ("should_epoch_stop".into(), b(self.should_epoch_stop)),
                                ("should_evaluate".into(), b(self.should_evaluate)),
                                ("should_log".into(), b(self.should_log)),
                                ("should_save".into(), b(self.should_save)),
                                ("should_training_stop".into(), b(self.should_training_stop)),
                            ]),
                        ),
                        ("attributes".into(), Value::Map(Vec::new())),
                    ]),
                )]),
            ),
            ("total_flos".into(), Value::Float(self.total_flos)),
            ("train_batch_size".into(), opt_int(self.train_batch_size)),
            ("trial_name".into(), Value::Null),
            ("trial_params".into(), Value::Null),
        ])
    }

    /// `TrainerState.save_to_json`: sorted keys, indent 2, trailing newline.
    pub fn to_json(&self) -> String {
        py_json(&self.to_value(), Some(2), true) + "\n"
    }

    /// Writes `trainer_state.json` into `dir` (the output dir or a `checkpoint-N` folder).
    pub fn save(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join(TRAINER_STATE_NAME);
        write_atomic(&path, self.to_json().as_bytes())?;
        Ok(path)
    }

    /// Reads a `trainer_state.json` (HF's or ours) back, for resuming.
    pub fn load(path: &Path) -> io::Result<TrainerState> {
        let text = std::fs::read_to_string(path)?;
        let bad = |m: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {m}", path.display()),
            )
        };
        let Value::Map(top) = read_py_json(&text).map_err(bad)? else {
            return Err(bad("not a JSON object".into()));
        };
        let get = |k: &str| top.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let num = |k: &str| match get(k) {
            Some(Value::Int(i)) => Some(*i as f64),
            Some(Value::Float(x)) => Some(*x),
            _ => None,
        };
        let uint = |k: &str| num(k).map(|x| x.max(0.0) as u64);
        let mut st = TrainerState {
            epoch: num("epoch").unwrap_or(0.0),
            global_step: uint("global_step").unwrap_or(0),
            max_steps: uint("max_steps").unwrap_or(0),
            logging_steps: uint("logging_steps").unwrap_or(500),
            eval_steps: uint("eval_steps").unwrap_or(500),
            save_steps: uint("save_steps").unwrap_or(500),
            train_batch_size: uint("train_batch_size"),
            num_train_epochs: uint("num_train_epochs").unwrap_or(0),
            num_input_tokens_seen: uint("num_input_tokens_seen").unwrap_or(0),
            total_flos: num("total_flos").unwrap_or(0.0),
            best_metric: num("best_metric"),
            best_global_step: uint("best_global_step"),
            best_model_checkpoint: match get("best_model_checkpoint") {
                Some(Value::Str(s)) => Some(s.clone()),
                _ => None,
            },
            ..TrainerState::default()
        };
        if let Some(Value::List(items)) = get("log_history") {
            st.log_history = items
                .iter()
                .filter_map(|v| match v {
                    Value::Map(m) => Some(m.clone()),
                    _ => None,
                })
                .collect();
        }
        Ok(st)
    }
}

// ---------------------------------------------------------------------------------------------------------
// *_results.json (HF save_metrics / log_metrics / speed_metrics)

/// HF `speed_metrics`: `{split}_runtime` (4 decimals) and per-second rates (3 decimals).
pub fn speed_metrics(
    split: &str,
    runtime_secs: f64,
    num_samples: Option<u64>,
    num_steps: Option<u64>,
    num_tokens: Option<u64>,
) -> Vec<(String, Value)> {
    let mut m = vec![(
        format!("{split}_runtime"),
        Value::Float(py_round(runtime_secs, 4)),
    )];
    if runtime_secs == 0.0 {
        return m;
    }
    for (name, n) in [
        ("samples", num_samples),
        ("steps", num_steps),
        ("tokens", num_tokens),
    ] {
        if let Some(n) = n {
            m.push((
                format!("{split}_{name}_per_second"),
                Value::Float(py_round(n as f64 / runtime_secs, 3)),
            ));
        }
    }
    m
}

/// The metrics `Trainer.train` returns (`train_results.json`): speed metrics, `total_flos`, `train_loss`
/// (mean of every step's loss) and `epoch` (which HF's `log` adds to the same dict).
pub fn train_metrics(
    runtime_secs: f64,
    num_train_samples: u64,
    max_steps: u64,
    total_flos: f64,
    train_loss: f64,
    epoch: f64,
) -> Vec<(String, Value)> {
    let mut m = speed_metrics(
        "train",
        runtime_secs,
        Some(num_train_samples),
        Some(max_steps),
        None,
    );
    m.push(("total_flos".into(), Value::Float(total_flos)));
    m.push(("train_loss".into(), Value::Float(train_loss)));
    m.push(("epoch".into(), Value::Float(epoch)));
    m
}

/// `exp(eval_loss)`, infinite on overflow (LLaMA-Factory's `eval_perplexity`).
pub fn perplexity(eval_loss: f64) -> f64 {
    eval_loss.exp()
}

/// HF `save_metrics(split, metrics, combined=True)`: writes `{split}_results.json` and merges the metrics
/// into `all_results.json` (both sorted, indent 4).
pub fn save_metrics(
    output_dir: &Path,
    split: &str,
    metrics: &[(String, Value)],
    combined: bool,
) -> io::Result<()> {
    let own = Value::Map(metrics.to_vec());
    write_atomic(
        &output_dir.join(format!("{split}_results.json")),
        py_json(&own, Some(4), true).as_bytes(),
    )?;
    if combined {
        let path = output_dir.join("all_results.json");
        let mut all = match std::fs::read_to_string(&path) {
            Ok(text) => match read_py_json(&text) {
                Ok(Value::Map(m)) => m,
                _ => Vec::new(),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for (k, v) in metrics {
            match all.iter_mut().find(|(key, _)| key == k) {
                Some((_, old)) => *old = v.clone(),
                None => all.push((k.clone(), v.clone())),
            }
        }
        write_atomic(&path, py_json(&Value::Map(all), Some(4), true).as_bytes())?;
    }
    Ok(())
}

/// HF `metrics_format` + `log_metrics`: the `***** train metrics *****` block (runtime as `H:MM:SS.ss`,
/// `total_flos` in GF, floats to 4 decimals), aligned.
pub fn format_metrics(split: &str, metrics: &[(String, Value)]) -> String {
    let mut rows: Vec<(String, String)> = metrics
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::Float(x) if k.ends_with("_runtime") => {
                    let whole = x.max(0.0) as u64;
                    let frac = ((x - whole as f64) * 100.0).clamp(0.0, 99.0) as u64;
                    format!("{}.{frac:02}", format_duration(whole as f64))
                }
                Value::Float(x) if k == "total_flos" => format!("{}GF", (*x as i64) >> 30),
                Value::Int(i) if k == "total_flos" => format!("{}GF", i >> 30),
                Value::Float(x) => py_float(py_round(*x, 4)),
                other => other.scalar_text().unwrap_or_else(|| other.to_string()),
            };
            (k.clone(), text)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let kw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let vw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = format!("***** {split} metrics *****\n");
    for (k, v) in rows {
        out.push_str(&format!("  {k:<kw$} = {v:>vw$}\n"));
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Terminal progress line

/// One status line per logging step: redrawn in place on a terminal, plain lines otherwise (logs, pipes).
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    last_len: usize,
}

/// What the progress line shows.
#[derive(Debug, Clone, Default)]
pub struct ProgressInfo<'a> {
    pub step: u64,
    pub total: u64,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub elapsed: &'a str,
    pub remaining: &'a str,
}

impl Progress {
    /// Redraws in place when stderr is a terminal.
    pub fn new() -> Progress {
        Progress {
            tty: io::stderr().is_terminal(),
            last_len: 0,
        }
    }

    /// A progress line that always prints plain lines (or always redraws).
    pub fn with_tty(tty: bool) -> Progress {
        Progress { tty, last_len: 0 }
    }

    /// The line's text: `12/300 [4%] loss 1.2345 lr 9.000e-05 1234 tok/s 0:00:12<0:04:48`.
    pub fn format(info: &ProgressInfo) -> String {
        let pct = if info.total > 0 {
            info.step as f64 / info.total as f64 * 100.0
        } else {
            100.0
        };
        let mut s = format!("{}/{} [{pct:.0}%]", info.step, info.total);
        if let Some(l) = info.loss {
            s.push_str(&format!(" loss {l:.4}"));
        }
        if let Some(lr) = info.lr {
            s.push_str(&format!(" lr {lr:.3e}"));
        }
        if let Some(t) = info.tokens_per_second {
            s.push_str(&format!(" {t:.0} tok/s"));
        }
        s.push_str(&format!(" {}<{}", info.elapsed, info.remaining));
        s
    }

    /// Writes the line to `out` (`\r` + padding on a terminal, a newline otherwise).
    pub fn draw_to(&mut self, out: &mut dyn Write, info: &ProgressInfo) -> io::Result<()> {
        let line = Progress::format(info);
        if self.tty {
            let pad = self.last_len.saturating_sub(line.len());
            write!(out, "\r{line}{}", " ".repeat(pad))?;
            self.last_len = line.len();
        } else {
            writeln!(out, "{line}")?;
        }
        out.flush()
    }

    /// Draws on stderr.
    pub fn draw(&mut self, info: &ProgressInfo) -> io::Result<()> {
        self.draw_to(&mut io::stderr().lock(), info)
    }

    /// Ends a redrawn line (so the next output starts on a fresh line).
    pub fn finish(&mut self) -> io::Result<()> {
        if self.tty && self.last_len > 0 {
            self.last_len = 0;
            writeln!(io::stderr())?;
        }
        Ok(())
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrotune-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn python_json_formatting() {
        let v = Value::Map(vec![(
            "a".into(),
            Value::List(
                [
                    1e-05,
                    2.368421052631579e-05,
                    0.08,
                    1e16,
                    123456789.0,
                    1.5e-7,
                    0.0001,
                    100.0,
                    1e15,
                    f64::NAN,
                    f64::INFINITY,
                    -0.0,
                ]
                .into_iter()
                .map(Value::Float)
                .chain([Value::Str("é\"x\n".into())])
                .collect(),
            ),
        )]);
        // What Python's json.dumps prints for the same values.
        assert_eq!(
            py_json(&v, None, false),
            r#"{"a": [1e-05, 2.368421052631579e-05, 0.08, 1e+16, 123456789.0, 1.5e-07, 0.0001, 100.0, 1000000000000000.0, NaN, Infinity, -0.0, "\u00e9\"x\n"]}"#
        );
        let v = Value::Map(vec![
            ("b".into(), Value::Map(vec![])),
            ("a".into(), Value::List(vec![])),
            (
                "c".into(),
                Value::List(vec![
                    Value::Int(1),
                    Value::Map(vec![("z".into(), Value::Int(1)), ("y".into(), Value::Null)]),
                ]),
            ),
        ]);
        assert_eq!(
            py_json(&v, Some(2), true),
            "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    {\n      \"y\": null,\n      \"z\": 1\n    }\n  ]\n}"
        );
        let back =
            read_py_json(r#"{"x": NaN, "y": [Infinity, -Infinity], "s": "NaN Infinity"}"#).unwrap();
        let Value::Map(m) = back else { panic!() };
        let get = |k: &str| {
            m.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert!(matches!(get("x"), Value::Float(x) if x.is_nan()));
        assert_eq!(
            get("y"),
            Value::List(vec![
                Value::Float(f64::INFINITY),
                Value::Float(f64::NEG_INFINITY)
            ])
        );
        assert_eq!(get("s"), Value::Str("NaN Infinity".into()));
        assert_eq!(py_round(2.0 / 3.0 * 100.0, 2), 66.67);
        assert_eq!(py_round(0.125, 2), 0.12);
    }

    #[test]
    fn durations_like_timedelta() {
        assert_eq!(format_duration(0.0), "0:00:00");
        assert_eq!(format_duration(83.9), "0:01:23");
        assert_eq!(format_duration(90061.7), "1 day, 1:01:01");
        assert_eq!(format_duration(3.0 * 86400.0 + 5.0), "3 days, 0:00:05");
    }

    #[test]
    fn trainer_log_lines_match_llamafactory() {
        let d = tmpdir("jsonl");
        std::fs::write(d.join(TRAINER_LOG), "old\n").unwrap();
        let mut log = TrainerLog::new(&d, true).unwrap();
        assert!(
            !d.join(TRAINER_LOG).exists(),
            "overwrite_output_dir deletes the previous log"
        );
        log.on_train_begin(375);
        let entry = LogEntry {
            loss: Some(1.6021),
            lr: Some(2.368421052631579e-05),
            epoch: Some(0.08),
            ..LogEntry::default()
        };
        log.on_log_at(10, &entry, 53248, 43.2).unwrap();
        let eval = LogEntry {
            eval_loss: Some(1.5),
            epoch: Some(0.08),
            ..LogEntry::default()
        };
        log.on_log_at(10, &eval, 0, 44.0).unwrap();
        let text = std::fs::read_to_string(d.join(TRAINER_LOG)).unwrap();
        // The lines LLaMA-Factory's LogCallback writes for the same state (remaining = 365 * 4.32 s).
        assert_eq!(
            text,
            "{\"current_steps\": 10, \"total_steps\": 375, \"loss\": 1.6021, \"lr\": 2.368421052631579e-05, \
             \"epoch\": 0.08, \"percentage\": 2.67, \"elapsed_time\": \"0:00:43\", \"remaining_time\": \"0:26:16\", \
             \"throughput\": 1232.59, \"total_tokens\": 53248}\n\
             {\"current_steps\": 10, \"total_steps\": 375, \"eval_loss\": 1.5, \"epoch\": 0.08, \"percentage\": 2.67, \
             \"elapsed_time\": \"0:00:44\", \"remaining_time\": \"0:26:46\"}\n"
        );
        // A resumed run (no overwrite) appends.
        let mut log = TrainerLog::new(&d, false).unwrap();
        log.on_train_begin(0);
        log.on_log_at(0, &LogEntry::default(), 0, 0.0).unwrap();
        let text = std::fs::read_to_string(d.join(TRAINER_LOG)).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("{\"current_steps\": 0, \"total_steps\": 0, \"percentage\": 100, \"elapsed_time\": \"0:00:00\", \"remaining_time\": \"0:00:00\"}\n"));
        // Evaluation-only runs log every 5 prediction steps and the last one.
        let mut log = TrainerLog::new(&d, true).unwrap();
        let lines: Vec<_> = (0..10)
            .filter_map(|_| log.on_prediction_step(10).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let mut log = TrainerLog::new(&d, true).unwrap();
        let steps: Vec<_> = (0..7)
            .filter_map(|_| log.on_prediction_step(7).unwrap())
            .map(|line| py_json(&line, None, false))
            .collect();
        assert_eq!(steps.len(), 2);
        assert!(steps[0].starts_with("{\"current_steps\": 5, \"total_steps\": 7, \"percentage\": 71.43,"), "{}", steps[0]);
        assert!(steps[1].starts_with("{\"current_steps\": 7, \"total_steps\": 7, \"percentage\": 100.0,"), "{}", steps[1]);
    }

    #[test]
    fn trainer_state_matches_hf_layout() {
        let d = tmpdir("state");
        let mut st = TrainerState {
            max_steps: 6,
            logging_steps: 2,
            train_batch_size: Some(2),
            num_train_epochs: 3,
            should_save: true,
            should_training_stop: true,
            ..TrainerState::default()
        };
        st.global_step = 2;
        st.epoch = 1.0;
        st.log(vec![
            ("loss".into(), Value::Float(2.25)),
            ("grad_norm".into(), Value::Float(1.5)),
            ("learning_rate".into(), Value::Float(5e-05)),
        ]);
        st.global_step = 6;
        st.epoch = 3.0;
        st.total_flos = 1234.0;
        let mut metrics = train_metrics(1.23449, 15, 6, 1234.0, 2.0, 3.0);
        metrics.retain(|(k, _)| k != "epoch");
        st.log(metrics);
        let path = st.save(&d).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // HF TrainerState.save_to_json for the same state, written by hand from its format.
        let expected = r#"{
  "best_global_step": null,
  "best_metric": null,
  "best_model_checkpoint": null,
  "epoch": 3.0,
  "eval_steps": 500,
  "global_step": 6,
  "is_hyper_param_search": false,
  "is_local_process_zero": true,
  "is_world_process_zero": true,
  "log_history": [
    {
      "epoch": 1.0,
      "grad_norm": 1.5,
      "learning_rate": 5e-05,
      "loss": 2.25,
      "step": 2
    },
    {
      "epoch": 3.0,
      "step": 6,
      "total_flos": 1234.0,
      "train_loss": 2.0,
      "train_runtime": 1.2345,
      "train_samples_per_second": 12.151,
      "train_steps_per_second": 4.86
    }
  ],
  "logging_steps": 2,
  "max_steps": 6,
  "num_input_tokens_seen": 0,
  "num_train_epochs": 3,
  "save_steps": 500,
  "stateful_callbacks": {
    "TrainerControl": {
      "args": {
        "should_epoch_stop": false,
        "should_evaluate": false,
        "should_log": false,
        "should_save": true,
        "should_training_stop": true
      },
      "attributes": {}
    }
  },
  "total_flos": 1234.0,
  "train_batch_size": 2,
  "trial_name": null,
  "trial_params": null
}
"#;
        assert_eq!(text, expected);
        let back = TrainerState::load(&path).unwrap();
        assert_eq!(back.log_history.len(), 2);
        assert_eq!(back.global_step, 6);
        assert_eq!(back.train_batch_size, Some(2));
    }

    #[test]
    fn results_files_like_save_metrics() {
        let d = tmpdir("results");
        let train = train_metrics(83.456789, 1000, 375, 5.5e15, 1.23456789, 3.0);
        save_metrics(&d, "train", &train, true).unwrap();
        let eval = vec![
            ("eval_loss".to_string(), Value::Float(1.5)),
            ("eval_perplexity".to_string(), Value::Float(perplexity(1.5))),
            ("epoch".to_string(), Value::Float(3.0)),
        ];
        save_metrics(&d, "eval", &eval, true).unwrap();
        let t = std::fs::read_to_string(d.join("train_results.json")).unwrap();
        assert_eq!(
            t,
            "{\n    \"epoch\": 3.0,\n    \"total_flos\": 5500000000000000.0,\n    \"train_loss\": 1.23456789,\n    \
             \"train_runtime\": 83.4568,\n    \"train_samples_per_second\": 11.982,\n    \"train_steps_per_second\": 4.493\n}"
        );
        let all = std::fs::read_to_string(d.join("all_results.json")).unwrap();
        let keys: Vec<&str> = all
            .lines()
            .filter_map(|l| l.trim().split('"').nth(1))
            .collect();
        assert_eq!(
            keys,
            [
                "epoch",
                "eval_loss",
                "eval_perplexity",
                "total_flos",
                "train_loss",
                "train_runtime",
                "train_samples_per_second",
                "train_steps_per_second"
            ]
        );
        assert!(all.contains("\"eval_perplexity\": 4.4816890703380645"));
        let block = format_metrics("train", &train);
        assert!(block.starts_with("***** train metrics *****\n"), "{block}");
        assert!(
            block.contains("  train_runtime            = 0:01:23.45\n"),
            "{block}"
        );
        assert!(
            block.contains("  total_flos               =  5122274GF\n"),
            "{block}"
        );
        assert!(
            block.contains("  train_loss               =     1.2346\n"),
            "{block}"
        );
    }

    #[test]
    fn progress_line_plain_and_tty() {
        let info = ProgressInfo {
            step: 12,
            total: 300,
            loss: Some(1.23456),
            lr: Some(9e-5),
            tokens_per_second: Some(1234.4),
            elapsed: "0:00:12",
            remaining: "0:04:48",
        };
        let mut out = Vec::new();
        Progress::with_tty(false).draw_to(&mut out, &info).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "12/300 [4%] loss 1.2346 lr 9.000e-5 1234 tok/s 0:00:12<0:04:48\n"
        );
        let mut out = Vec::new();
        let mut p = Progress::with_tty(true);
        p.draw_to(&mut out, &info).unwrap();
        p.draw_to(
            &mut out,
            &ProgressInfo {
                loss: None,
                lr: None,
                tokens_per_second: None,
                ..info.clone()
            },
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("\r12/300") && !s.contains('\n'));
        assert!(
            s.ends_with(&" ".repeat(33)),
            "the shorter line pads over the longer one: {s:?}"
        );
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let d = tmpdir("atomic");
        write_atomic(&d.join("x.json"), b"1").unwrap();
        write_atomic(&d.join("x.json"), b"2").unwrap();
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
        assert_eq!(std::fs::read(d.join("x.json")).unwrap(), b"2");
    }
}
