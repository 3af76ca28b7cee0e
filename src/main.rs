//! `ferrotune`: the command line at the top of the stack (see docs/ARCHITECTURE.md).

mod api;
mod bench;
mod chat_cmd;
mod chat_model;
mod engine_thread;
mod env;
mod export_cmd;
mod http;
mod model_cmd;
mod model_source;
mod train_cmd;
mod webui;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ferrotune", version, about = "LLM fine-tuning and inference on ferrotune's own tensor engine")]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print version, build, CPU features, threads and CUDA availability.
    Env,
    /// Measure the engine's kernels (GFLOP/s, tokens/s); `--json` for one JSON object per line.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inspect a model (HF folder, GGUF file or hub id) or convert it to an HF folder.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Fine-tune a model as `llamafactory-cli train` does: a YAML/JSON config plus `key=value` overrides.
    Train {
        /// The config file (`.yaml`, `.yml`, `.json`) and/or `key=value` overrides and `--key value` flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Merge adapters and write an HF folder (+ Ollama Modelfile) as `llamafactory-cli export` does.
    Export {
        /// The config file (`.yaml`, `.yml`, `.json`) and/or `key=value` overrides and `--key value` flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Chat with a model in the terminal as `llamafactory-cli chat` does (also reads piped lines).
    Chat {
        /// The config file and/or `key=value` overrides (model_name_or_path, adapter_name_or_path, template, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Serve an OpenAI-compatible API as `llamafactory-cli api` does (API_HOST, API_PORT, API_KEY).
    Api {
        /// The config file and/or `key=value` overrides.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// LLaMA Board: the low-code page (train with a progress bar and live loss curve) at http://127.0.0.1:7860.
    Webui {
        /// Address to listen on; anything but loopback prints a warning (the page can start runs and has no login).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0 picks a free one and prints it).
        #[arg(long, default_value_t = 7860)]
        port: u16,
    },
}

/// Let `ferrotune ... | head` end quietly: Rust ignores SIGPIPE by default, which turns a closed pipe into a
/// panic on the next print. Restoring the default makes the process exit like any Unix filter.
#[cfg(unix)]
fn restore_default_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13; // the same on Linux and macOS
    const SIG_DFL: usize = 0;
    // SAFETY: installing the default disposition for SIGPIPE before any thread starts has no preconditions.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    restore_default_sigpipe();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: could not start {n} worker threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Env => env::run(),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Train { args } => train_cmd::run(&args),
        Command::Export { args } => export_cmd::run(&args),
        Command::Chat { args } => chat_cmd::run(&args),
        Command::Api { args } => api::run(&args),
        Command::Webui { host, port } => webui::run(&host, port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
