//! The `ferrotune train` child process behind the Train and Evaluate & Predict tabs' Start / Abort (one run at a
//! time, as LLaMA-Factory's single runner) and what the page shows while it runs, read from the files the run
//! writes (as LLaMA-Factory's runner does): the last line of `trainer_log.jsonl` for the progress bar, every
//! `loss` line for the plot (raw and smoothed with LLaMA-Factory's `smooth`), the tail of `webui_subprocess.log`
//! (the child's stdout and stderr), and once it has finished, `all_results.json` (an evaluation's scores).

use super::form::RunKind;
use serde_json::{json, Value as Json};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// The log tail the page shows (LLaMA-Factory shows the last 20,000 characters).
const LOG_TAIL_BYTES: u64 = 20_000;
pub const SUBPROCESS_LOG: &str = "webui_subprocess.log";

struct Run {
    child: Child,
    kind: RunKind,
    output_dir: PathBuf,
    started: Instant,
    aborted: bool,
    /// Set once the child has exited: "finished", "aborted" or "failed (exit code N)".
    outcome: Option<String>,
}

#[derive(Default)]
pub struct Runner {
    run: Option<Run>,
}

impl Runner {
    fn refresh(&mut self) {
        if let Some(run) = &mut self.run {
            if run.outcome.is_none() {
                if let Ok(Some(status)) = run.child.try_wait() {
                    run.outcome = Some(if run.aborted {
                        "aborted".to_string()
                    } else if status.success() {
                        "finished".to_string()
                    } else {
                        match status.code() {
                            Some(c) => format!("failed (exit code {c})"),
                            None => "failed (killed by a signal)".to_string(),
                        }
                    });
                }
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.refresh();
        self.run.as_ref().is_some_and(|r| r.outcome.is_none())
    }

    /// Runs `ferrotune train <yaml>` (this same binary) with its output going to `output_dir/webui_subprocess.log`.
    pub fn start(&mut self, yaml: &Path, output_dir: &Path, kind: RunKind) -> Result<u32, String> {
        if self.is_running() {
            return Err("a run is already in progress; abort it or wait for it to finish".into());
        }
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the ferrotune binary to run: {e}"))?;
        let log_path = output_dir.join(SUBPROCESS_LOG);
        // Appended to, so a resumed run keeps the log of the runs before it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("cannot open {} twice: {e}", log_path.display()))?;
        let child = Command::new(exe)
            .arg("train")
            .arg(yaml)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start `ferrotune train`: {e}"))?;
        let pid = child.id();
        self.run = Some(Run { child, kind, output_dir: output_dir.to_path_buf(), started: Instant::now(), aborted: false, outcome: None });
        Ok(pid)
    }

    /// Asks the run to stop after the optimizer step in progress, where `ferrotune train` saves a checkpoint (an
    /// evaluation stops after the decode step in progress and writes no results).
    pub fn abort(&mut self) -> Result<String, String> {
        if !self.is_running() {
            return Err("no run is in progress".into());
        }
        let Some(run) = &mut self.run else { return Err("no run is in progress".into()) };
        run.aborted = true;
        request_stop(&mut run.child).map_err(|e| format!("cannot signal the training process: {e}"))?;
        Ok(match run.kind {
            RunKind::Train => "abort requested: the run stops after the current step and saves a checkpoint".into(),
            RunKind::Eval => "abort requested: the evaluation stops after the current decode step; no results are written".into(),
        })
    }

    pub fn status(&mut self) -> Json {
        self.refresh();
        let Some(run) = &self.run else { return json!({ "state": "idle" }) };
        let state = match &run.outcome {
            None if run.aborted => "aborting",
            None => "running",
            Some(_) => "done",
        };
        let mut s = trainer_status(&run.output_dir);
        s["state"] = json!(state);
        s["kind"] = json!(run.kind.as_str());
        s["outcome"] = json!(run.outcome);
        s["output_dir"] = json!(run.output_dir.display().to_string());
        s["wall_secs"] = json!(run.started.elapsed().as_secs_f64());
        s["log"] = json!(log_tail(&run.output_dir.join(SUBPROCESS_LOG)));
        if run.outcome.as_deref() == Some("finished") {
            s["results"] = all_results(&run.output_dir);
        }
        s
    }
}

#[cfg(unix)]
fn request_stop(child: &mut Child) -> std::io::Result<()> {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGTERM: i32 = 15;
    // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped (try_wait said running).
    if unsafe { kill(child.id() as i32, SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Without Unix signals there is no step-boundary stop: the process is ended and the last saved checkpoint kept.
#[cfg(not(unix))]
fn request_stop(child: &mut Child) -> std::io::Result<()> {
    child.kill()
}

/// `all_results.json` of a finished run (LLaMA-Factory's `load_eval_results`), `null` when there is none or it
/// cannot be read.
fn all_results(output_dir: &Path) -> Json {
    std::fs::read_to_string(output_dir.join("all_results.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Json::Null)
}

/// The last `LOG_TAIL_BYTES` of a file, cut at a character boundary.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    // A cut in the middle of a UTF-8 sequence shows as replacement characters at the start: drop them.
    text.trim_start_matches('\u{FFFD}').to_string()
}

/// Progress and loss curve from `trainer_log.jsonl` (LLaMA-Factory's `get_trainer_info` / `gen_loss_plot`):
/// `progress.label` is "Running {cur}/{total}: {elapsed} < {remaining}".
pub fn trainer_status(output_dir: &Path) -> Json {
    let text = std::fs::read_to_string(output_dir.join("trainer_log.jsonl")).unwrap_or_default();
    let lines: Vec<Json> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let (mut steps, mut losses) = (Vec::new(), Vec::new());
    for l in &lines {
        if let (Some(step), Some(loss)) = (l.get("current_steps").and_then(Json::as_f64), l.get("loss").and_then(Json::as_f64)) {
            steps.push(step);
            losses.push(loss);
        }
    }
    let smoothed = ferrotune_args::plot::smooth(&losses);
    let progress = lines.last().map(|last| {
        let cur = last.get("current_steps").and_then(Json::as_u64).unwrap_or(0);
        let total = last.get("total_steps").and_then(Json::as_u64).unwrap_or(0);
        let text = |k: &str| last.get(k).and_then(Json::as_str).unwrap_or("").to_string();
        let percentage = last.get("percentage").and_then(Json::as_f64).unwrap_or(0.0);
        json!({
            "current_steps": cur,
            "total_steps": total,
            "percentage": percentage,
            "label": format!("Running {cur}/{total}: {} < {}", text("elapsed_time"), text("remaining_time")),
        })
    });
    json!({ "progress": progress, "loss": { "steps": steps, "raw": losses, "smoothed": smoothed } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_loss_come_from_trainer_log_lines() {
        let dir = std::env::temp_dir().join(format!("ferrotune-webui-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("trainer_log.jsonl"),
            concat!(
                r#"{"current_steps": 1, "total_steps": 4, "loss": 3.0, "percentage": 25.0, "elapsed_time": "0:00:01", "remaining_time": "0:00:03"}"#,
                "\n",
                r#"{"current_steps": 2, "total_steps": 4, "eval_loss": 2.9, "percentage": 50.0, "elapsed_time": "0:00:02", "remaining_time": "0:00:02"}"#,
                "\n",
                r#"{"current_steps": 4, "total_steps": 4, "loss": 2.0, "percentage": 100.0, "elapsed_time": "0:00:04", "remaining_time": "0:00:00"}"#,
                "\n"
            ),
        )
        .unwrap();
        let s = trainer_status(&dir);
        assert_eq!(s["progress"]["label"], "Running 4/4: 0:00:04 < 0:00:00");
        assert_eq!(s["progress"]["percentage"], 100.0);
        assert_eq!(s["loss"]["steps"], json!([1.0, 4.0]));
        assert_eq!(s["loss"]["raw"], json!([3.0, 2.0]));
        // LLaMA-Factory's smooth for two points: weight 1.8 * (sigmoid(0.1) - 0.5), first point unchanged.
        let w = 1.8 * (1.0 / (1.0 + (-0.1f64).exp()) - 0.5);
        let second = s["loss"]["smoothed"][1].as_f64().unwrap();
        assert!((second - (3.0 * w + 2.0 * (1.0 - w))).abs() < 1e-12);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
