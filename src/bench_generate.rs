//! `ferrotune bench generate`: prompt-processing and decode throughput of the inference engine
//! (`ferrotune-infer`), per weight format, batch size and thread count, with resident memory and the memory
//! bandwidth roofline next to it.
//!
//! Per case: every sequence of the batch gets its own synthetic prompt of `--prompt-len` token ids (the ids do
//! not change the cost) and is prefilled alone, one batched forward each (prompt tokens/s = all prompt tokens /
//! prefill time); then all sequences decode `--gen` tokens together, one forward per step with one row per
//! sequence (greedy, no eos, so every sequence runs the full length). Decode tokens/s are reported per sequence
//! (steps/s) and aggregate (batch x steps/s). A warm-up prefill and decode run before timing.
//!
//! The roofline: decoding must read every weight once per step, so `read bandwidth / weight bytes` is the most
//! steps/s the machine's memory allows. The bandwidth is measured here with a parallel sum over a 512 MiB
//! buffer on the same threads (best of 5), before any model is loaded; the peak resident memory is reset before
//! each format (Linux), so it is that format's load + run.

use ferrotune_infer::{argmax, InferenceModel, KvCache, Segment, WeightFormat};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model (GGUF file, HF folder or hub id). Default: FERROTUNE_SMOLLM2_GGUF or
    /// .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-smollm2.sh).
    #[arg(long)]
    pub model: Option<String>,
    /// Weight formats, comma-separated: f32, bf16, q8_0, q4_1 (a GGUF's own blocks are kept when they match).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,q8_0,q4_1")]
    pub weights: Vec<String>,
    /// Batch sizes (sequences decoding together), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    /// Tokens generated per sequence.
    #[arg(long, default_value_t = 128)]
    pub gen: usize,
    /// Thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub threads: Vec<usize>,
    /// Print one JSON object per case instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: GenerateArgs) -> Result<(), String> {
    let model_path = match &args.model {
        Some(m) => m.clone(),
        None => default_model()?,
    };
    let formats: Vec<WeightFormat> = args.weights.iter().map(|w| WeightFormat::parse(w).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    if args.batch.contains(&0) || args.threads.contains(&0) || args.prompt_len == 0 || args.gen == 0 {
        return Err("--batch, --threads, --prompt-len and --gen must be at least 1".into());
    }
    if !args.json {
        println!("model {model_path}; load average {}", load_average());
        println!(
            "{:>6} {:>5} {:>7} {:>9} {:>12} {:>13} {:>13} {:>9} {:>9} {:>10} {:>9} {:>9}",
            "format", "batch", "threads", "weights", "prompt tok/s", "decode tok/s", "aggregate", "cpu-est", "roofline", "read GB/s", "rss MB", "peak MB"
        );
    }
    // Bandwidth first: its 512 MiB buffer must not count in the peak resident memory of any case.
    let mut bandwidths = Vec::new();
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
        bandwidths.push(pool.install(read_bandwidth));
    }
    for &format in &formats {
        reset_peak_rss();
        let (model, _) = InferenceModel::load(&model_path, format).map_err(|e| e.to_string())?;
        let max_len = args.prompt_len + args.gen + 1;
        if max_len > model.max_positions() {
            return Err(format!("--prompt-len + --gen = {max_len} is past the model's {} positions", model.max_positions()));
        }
        for (&threads, &bandwidth) in args.threads.iter().zip(&bandwidths) {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
            for &batch in &args.batch {
                let r = pool.install(|| measure(&model, batch, args.prompt_len, args.gen)).map_err(|e| e.to_string())?;
                let weight_bytes = model.nbytes() as f64;
                let roofline = bandwidth / weight_bytes;
                let (rss, peak) = memory_mb();
                if args.json {
                    let line = serde_json::json!({
                        "bench": "generate", "model": model_path, "weights": format.name(), "batch": batch, "threads": threads,
                        "prompt_len": args.prompt_len, "gen": args.gen,
                        "prompt_tok_s": r.prompt_tok_s, "decode_tok_s": r.decode_tok_s, "decode_tok_s_aggregate": r.decode_tok_s * batch as f64,
                        "prompt_tok_s_cpu": r.prompt_tok_s_cpu, "decode_tok_s_cpu": r.decode_tok_s_cpu,
                        "weight_mb": weight_bytes / 1e6, "kv_cache_mb": r.cache_bytes as f64 / 1e6,
                        "read_gb_s": bandwidth / 1e9, "roofline_decode_tok_s": roofline,
                        "rss_mb": rss, "peak_rss_mb": peak, "load_average": load_average(),
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{:>6} {:>5} {:>7} {:>7.0}MB {:>12.1} {:>13.1} {:>13.1} {:>9.1} {:>9.1} {:>10.1} {:>9.0} {:>9.0}",
                        format.name(),
                        batch,
                        threads,
                        weight_bytes / 1e6,
                        r.prompt_tok_s,
                        r.decode_tok_s,
                        r.decode_tok_s * batch as f64,
                        r.decode_tok_s_cpu,
                        roofline,
                        bandwidth / 1e9,
                        rss,
                        peak
                    );
                }
            }
        }
    }
    if !args.json {
        println!(
            "decode tok/s is per sequence; aggregate = batch x per sequence; cpu-est = decode tok/s had the threads had \
             their cores (tokens / (process CPU s / threads)); roofline = read bandwidth / weight bytes (decode steps/s)"
        );
        println!("load average after: {}", load_average());
    }
    Ok(())
}

fn default_model() -> Result<String, String> {
    if let Some(p) = std::env::var_os("FERROTUNE_SMOLLM2_GGUF") {
        return Ok(PathBuf::from(p).display().to_string());
    }
    let p = PathBuf::from(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        return Ok(p.display().to_string());
    }
    Err("no --model given and .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf is missing: run scripts/fetch-smollm2.sh".into())
}

struct Rates {
    prompt_tok_s: f64,
    decode_tok_s: f64,
    /// Rates if the process had had `threads` cores to itself: tokens / (process CPU seconds / threads). On a
    /// machine shared with other jobs the wall-clock rates undercount; this overcounts a little when workers
    /// wait idle (rayon's brief spinning is CPU time, so it is counted, which keeps the estimate conservative).
    prompt_tok_s_cpu: f64,
    decode_tok_s_cpu: f64,
    cache_bytes: usize,
}

fn measure(model: &InferenceModel, batch: usize, prompt_len: usize, gen: usize) -> ferrotune_models::Result<Rates> {
    let vocab = model.vocab_size() as u64;
    let max_len = prompt_len + gen + 1;
    let mut caches: Vec<KvCache> = (0..batch).map(|_| model.new_cache(max_len)).collect::<ferrotune_models::Result<_>>()?;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| (0..prompt_len).map(|i| (ferrotune_tensor::rng::mix64((b * 1_000_003 + i) as u64) % (vocab - 100) + 100) as u32).collect())
        .collect();
    // Warm-up: thread pool, scratch buffers, page faults of the weights.
    {
        let warm = &prompts[0][..prompt_len.min(64)];
        let mut segs: Vec<Segment> = caches.iter_mut().map(|c| Segment { cache: c, tokens: warm }).collect();
        model.forward(&mut segs[..1])?;
        let tok = [1u32];
        for _ in 0..2 {
            let mut segs: Vec<Segment> = segs.iter_mut().map(|s| Segment { cache: &mut *s.cache, tokens: &tok }).collect();
            model.forward(&mut segs)?;
        }
        drop(segs);
        caches.iter_mut().for_each(KvCache::clear);
    }
    let threads = rayon::current_num_threads() as f64;
    let cpu0 = process_cpu_secs();
    let start = Instant::now();
    let mut next = Vec::with_capacity(batch);
    for (cache, prompt) in caches.iter_mut().zip(&prompts) {
        let logits = model.forward(&mut [Segment { cache, tokens: prompt }])?;
        next.push(argmax(&logits));
    }
    let prefill = start.elapsed().as_secs_f64();
    let cpu1 = process_cpu_secs();
    let start = Instant::now();
    for _ in 0..gen {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut segs: Vec<Segment> = caches.iter_mut().zip(&tokens).map(|(cache, t)| Segment { cache, tokens: t }).collect();
        let logits = model.forward(&mut segs)?;
        next = logits.chunks_exact(model.vocab_size()).map(argmax).collect();
    }
    let decode = start.elapsed().as_secs_f64();
    let cpu2 = process_cpu_secs();
    Ok(Rates {
        prompt_tok_s: (batch * prompt_len) as f64 / prefill,
        decode_tok_s: gen as f64 / decode,
        prompt_tok_s_cpu: (batch * prompt_len) as f64 / ((cpu1 - cpu0) / threads),
        decode_tok_s_cpu: gen as f64 / ((cpu2 - cpu1) / threads),
        cache_bytes: caches.iter().map(KvCache::nbytes).sum(),
    })
}

/// Bytes per second a parallel sum reads from a buffer far larger than the caches (best of 5).
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let buf = vec![1.0f32; 128 << 20];
    let mut best = f64::MAX;
    let mut total = 0.0f32;
    for _ in 0..5 {
        let start = Instant::now();
        total += buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0.0f32; 16];
                for x in c.chunks_exact(16) {
                    for l in 0..16 {
                        acc[l] += x[l];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum::<f32>();
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(total);
    (buf.len() * 4) as f64 / best
}

/// User + system CPU seconds of the whole process so far (/proc/self/stat, 100 ticks per second on Linux).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0
}

/// Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM), so each format's peak is its own
/// (load + run), not the largest model's before it. Elsewhere the peak stays process-wide.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// (current, peak) resident set in MB, from /proc/self/status (0 where unavailable).
fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}
