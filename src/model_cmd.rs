//! `ferrotune model`: look at a model (`info`) and convert one to an HF folder (`convert`), for any source
//! `model_name_or_path` accepts: an HF folder, a GGUF file, or a hub id.

use clap::{Args, Subcommand, ValueEnum};
use ferrotune_models::hub::HubOptions;
use ferrotune_models::loader::{load_model, save_hf_folder};
use ferrotune_models::{LoadOptions, WeightDType};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Load a model and print its config, parameter count, tokenizer, load time and peak memory.
    Info(InfoArgs),
    /// Write a model (GGUF file, HF folder or hub id) as an HF folder transformers and ferrotune both load.
    Convert(ConvertArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WeightDTypeArg {
    F32,
    Bf16,
}

impl From<WeightDTypeArg> for WeightDType {
    fn from(d: WeightDTypeArg) -> WeightDType {
        match d {
            WeightDTypeArg::F32 => WeightDType::F32,
            WeightDTypeArg::Bf16 => WeightDType::BF16,
        }
    }
}

#[derive(Args)]
pub struct InfoArgs {
    /// HF folder, .gguf file, or hub id (org/name).
    model: String,
    /// dtype the weights are held in after loading.
    #[arg(long, value_enum, default_value_t = WeightDTypeArg::F32)]
    dtype: WeightDTypeArg,
    /// Hub cache folder (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// HF folder, .gguf file, or hub id (org/name).
    model: String,
    /// Output folder; must not already hold a model.
    out_dir: PathBuf,
    /// dtype of the written weights.
    #[arg(long, value_enum, default_value_t = WeightDTypeArg::F32)]
    dtype: WeightDTypeArg,
    /// Hub cache folder (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

pub fn run(cmd: ModelCommand) -> Result<(), String> {
    match cmd {
        ModelCommand::Info(args) => info(args),
        ModelCommand::Convert(args) => convert(args),
    }
}

fn hub_options(cache_dir: Option<PathBuf>) -> HubOptions {
    let mut hub = HubOptions::from_env();
    if cache_dir.is_some() {
        hub.cache_dir = cache_dir;
    }
    hub
}

fn info(args: InfoArgs) -> Result<(), String> {
    let start = Instant::now();
    let opts = LoadOptions { dtype: args.dtype.into() };
    let model = load_model(&args.model, &opts, &hub_options(args.cache_dir)).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let c = &model.config;
    println!("source:            {}", model.source.display());
    println!("architecture:      {} ({})", c.architecture.hf_class(), c.architecture.model_type());
    println!(
        "shape:             {} layers, hidden {}, intermediate {}, {} heads / {} kv heads of {}, vocab {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size
    );
    println!("parameters:        {} ({:.1} M)", c.num_parameters(), c.num_parameters() as f64 / 1e6);
    println!("tied embeddings:   {}", c.tie_word_embeddings);
    println!("rope:              theta {}, scaling {:?}", c.rope_theta, c.rope_scaling);
    println!("context:           {} positions, rms_norm_eps {}", c.max_position_embeddings, c.rms_norm_eps);
    match &model.tokenizer {
        Some(t) => println!(
            "tokenizer:         {} tokens, bos {:?}, eos {:?}, chat template {}",
            t.vocab_size(),
            t.bos_token,
            t.eos_token,
            if t.chat_template.is_some() { "yes" } else { "no" }
        ),
        None => println!("tokenizer:         none (no tokenizer.json next to the weights)"),
    }
    println!(
        "weights:           {} tensors, {:.1} MB as {:?}",
        model.weights.len(),
        model.weights.nbytes() as f64 / 1e6,
        opts.dtype
    );
    println!("load time:         {seconds:.2} s");
    match peak_rss_bytes() {
        Some(b) => println!("peak memory (RSS): {:.0} MB", b as f64 / 1e6),
        None => println!("peak memory (RSS): unknown on this OS"),
    }
    Ok(())
}

fn convert(args: ConvertArgs) -> Result<(), String> {
    if args.out_dir.join("config.json").exists() {
        return Err(format!(
            "{} already holds a model (config.json exists); choose an empty folder or remove it first",
            args.out_dir.display()
        ));
    }
    let opts = LoadOptions { dtype: args.dtype.into() };
    let model = load_model(&args.model, &opts, &hub_options(args.cache_dir)).map_err(|e| e.to_string())?;
    save_hf_folder(&args.out_dir, &model.config, &model.weights, model.tokenizer.as_ref(), model.generation_config.as_ref())
        .map_err(|e| e.to_string())?;
    println!("wrote {} ({} tensors)", args.out_dir.display(), model.weights.len());
    Ok(())
}

/// Peak resident set size of this process (`VmHWM` in /proc/self/status), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
