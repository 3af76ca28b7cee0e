//! The Export tab: LLaMA-Factory's `save_model` (webui/components/export.py) on `ferrotune export`.
//!
//! The page sends the top bar's model, adapters, template and dtype plus the tab's fields as `[key, value]` pairs;
//! they are checked here with ferrotune-args (which rejects GPTQ export quantization, the legacy format and hub
//! pushes with the support table's reason) and then exported by `ferrotune export --key=value ...` in a child
//! process: the request waits for it on its own connection thread, so the rest of the page keeps working, and a
//! crash in the export cannot take the server down. One export at a time.

use serde_json::{json, Value as Json};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct ExportTab {
    busy: AtomicBool,
}

/// Clears the busy flag however the export ends.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl ExportTab {
    /// `{args: [[key, value], ...]}` → `{message, export_dir, log}` once the export has finished.
    pub fn export(&self, workdir: &Path, body: &Json) -> Result<Json, String> {
        let flags = super::infer_flags(body)?;
        let given = |key: &str| flags.iter().find_map(|f| f.strip_prefix(&format!("--{key}="))).filter(|v| !v.is_empty());
        // Upstream's checks, in its order (export.py `save_model`), before ferrotune-args' own: a GPTQ request on
        // adapters gets upstream's answer, and without adapters the support table's.
        if given("model_name_or_path").is_none() {
            return Err("Please select a model: set the model path in the top bar.".into());
        }
        let Some(export_dir) = given("export_dir") else {
            return Err("Please specify export dir: the folder the merged model is written to.".into());
        };
        let quantize = given("export_quantization_bit").is_some_and(|b| b != "none");
        if quantize && given("export_quantization_dataset").is_none() {
            return Err("Please specify dataset for quantization (export_quantization_dataset).".into());
        }
        if quantize && given("adapter_name_or_path").is_some() {
            return Err("Please merge adapters before quantizing the model.".into());
        }
        ferrotune_args::parse_infer_args(&flags).map_err(|e| e.to_string())?;
        let target = workdir.join(export_dir);
        if target.join("config.json").exists() {
            return Err(format!("{export_dir} already holds a model (config.json); choose another export dir or remove it first"));
        }
        if self.busy.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return Err("an export is already running; wait for it to finish".into());
        }
        let _busy = Busy(&self.busy);
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the ferrotune binary: {e}"))?;
        let out = Command::new(exe)
            .arg("export")
            .args(&flags)
            .current_dir(workdir)
            .output()
            .map_err(|e| format!("cannot start ferrotune export: {e}"))?;
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let reason = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim_start_matches("error: ");
            return Err(format!("ferrotune export failed ({}): {reason}", out.status));
        }
        Ok(json!({
            "message": format!("Model exported to {export_dir}"),
            "export_dir": export_dir,
            "log": log,
        }))
    }
}
