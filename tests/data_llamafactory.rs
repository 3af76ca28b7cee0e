//! ferrotune-data against LLaMA-Factory 0.9.5 itself: tests/golden/data_llamafactory.json holds the token ids
//! and labels LLaMA-Factory's converters, templates and processors produce over its demo data with the SmolLM2
//! tokenizer (scripts/golden/llamafactory_data.py); here our pipeline runs on the same data and must agree token
//! for token, for every template and option case.
//!
//! Needs the SmolLM2 GGUF (`scripts/fetch-smollm2.sh`, or FERROTUNE_SMOLLM2_GGUF=path) for its tokenizer, and
//! LLaMA-Factory's demo data (FERROTUNE_LLAMAFACTORY_DATA, default ../shared/data/llamafactory next to the
//! repository). Without them the test prints what is missing and passes, unless FERROTUNE_REQUIRE_MODELS=1.

mod common;

use ferrotune_data::{load_dataset, make_batches, DataOptions, Encoded, Stage, IGNORE_INDEX};
use ferrotune_models::{gguf, ModelTokenizer};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

fn smollm2_tokenizer() -> Option<ModelTokenizer> {
    let path = common::smollm2_gguf()?;
    let file = gguf::GgufFile::open(&path).unwrap();
    Some(gguf::tokenizer::model_tokenizer(&file.metadata).unwrap())
}

fn llamafactory_data() -> Option<PathBuf> {
    let dir = std::env::var_os("FERROTUNE_LLAMAFACTORY_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/llamafactory")
        });
    if !dir.join("dataset_info.json").is_file() {
        common::skip_or_fail(&format!(
            "LLaMA-Factory demo data not found at {} (set FERROTUNE_LLAMAFACTORY_DATA to its data/ folder)",
            dir.display()
        ));
        return None;
    }
    Some(dir)
}

/// A dataset folder: LLaMA-Factory's dataset_info.json with absolute file names, plus the fixture's extra datasets.
fn dataset_dir(shared: &Path, fixture: &Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrotune-data-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(shared.join("dataset_info.json")).unwrap();
    let mut info: Map<String, Value> = serde_json::from_str(&text).unwrap();
    for entry in info.values_mut() {
        if let Some(Value::String(f)) = entry.get("file_name").cloned() {
            entry["file_name"] = Value::from(shared.join(f).display().to_string());
        }
    }
    for (name, extra) in fixture["extra_datasets"].as_object().unwrap() {
        let file = extra["info"]["file_name"].as_str().unwrap();
        std::fs::write(
            dir.join(file),
            serde_json::to_string(&extra["records"]).unwrap(),
        )
        .unwrap();
        info.insert(name.clone(), extra["info"].clone());
    }
    std::fs::write(
        dir.join("dataset_info.json"),
        serde_json::to_string_pretty(&Value::Object(info)).unwrap(),
    )
    .unwrap();
    dir
}

fn options(case: &Value, dir: &Path) -> DataOptions {
    let s = |k: &str| case.get(k).and_then(Value::as_str).map(str::to_string);
    let b = |k: &str| case.get(k).and_then(Value::as_bool);
    DataOptions {
        dataset: case["dataset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect(),
        dataset_dir: dir.to_path_buf(),
        template: s("template"),
        cutoff_len: case
            .get("cutoff_len")
            .and_then(Value::as_u64)
            .unwrap_or(2048) as usize,
        train_on_prompt: b("train_on_prompt").unwrap_or(false),
        mask_history: b("mask_history").unwrap_or(false),
        packing: b("packing"),
        neat_packing: b("neat_packing").unwrap_or(false),
        max_samples: case
            .get("max_samples")
            .and_then(Value::as_u64)
            .map(|n| n as usize),
        default_system: s("default_system"),
        enable_thinking: Some(b("enable_thinking").unwrap_or(true)),
        tool_format: s("tool_format"),
        ..DataOptions::default()
    }
}

/// Expected labels from the fixture's compact form.
fn expected_labels(row: &Value) -> Vec<i64> {
    let ids = row["ids"].as_array().unwrap();
    let mut other = row
        .get("other")
        .and_then(Value::as_array)
        .map(|o| o.iter())
        .into_iter()
        .flatten();
    row["mask"]
        .as_str()
        .unwrap()
        .chars()
        .zip(ids)
        .map(|(c, id)| match c {
            '-' => IGNORE_INDEX,
            '=' => id.as_i64().unwrap(),
            _ => other.next().unwrap().as_i64().unwrap(),
        })
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn first_difference<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

#[test]
fn every_template_and_option_matches_llamafactory_token_for_token() {
    let Some(base_tok) = smollm2_tokenizer() else {
        return;
    };
    let Some(shared) = llamafactory_data() else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/data_llamafactory.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dir = dataset_dir(&shared, &fixture);
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let stage = match case["stage"].as_str() {
            Some("pt") => Stage::Pt,
            Some("rm") => Stage::Rm,
            _ => Stage::Sft,
        };
        let mut tok = base_tok.clone();
        let mut opts = options(case, &dir);
        // predict_with_generate's eval set: the datasets as eval_dataset, prompts + response labels.
        let generate = case["stage"].as_str() == Some("sft_generate");
        if generate {
            opts.eval_dataset = std::mem::take(&mut opts.dataset);
            opts.predict_with_generate = true;
        }
        let module = match load_dataset(&mut tok, &opts, stage) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert_eq!(
            tok.eos_token.as_deref(),
            case["eos_token"].as_str(),
            "{name}: eos token after fixing the tokenizer"
        );
        assert_eq!(
            tok.vocab_size() as u64,
            case["vocab_size"].as_u64().unwrap(),
            "{name}: vocabulary size after fixing"
        );
        let expected = case["rows"].as_array().unwrap();
        let got: Vec<(Vec<u32>, Vec<i64>, Option<Vec<u32>>)> = match &module.train {
            _ if generate => module
                .eval_prompts
                .iter()
                .flatten()
                .map(|p| (p.input_ids.clone(), p.labels.iter().map(|&l| i64::from(l)).collect(), None))
                .collect(),
            Encoded::Examples(e) => e
                .iter()
                .map(|x| (x.input_ids.clone(), x.labels.clone(), None))
                .collect(),
            Encoded::Packed(p) => p
                .iter()
                .map(|r| {
                    (
                        r.input_ids.clone(),
                        r.labels.clone(),
                        Some(r.position_ids.clone()),
                    )
                })
                .collect(),
            // Preference pairs: chosen then rejected, as the fixture lists them.
            Encoded::Pairs(p) => p
                .iter()
                .flat_map(|x| [&x.chosen, &x.rejected])
                .map(|x| (x.input_ids.clone(), x.labels.clone(), None))
                .collect(),
        };
        if got.len() != expected.len() {
            failures.push(format!(
                "{name}: {} rows, LLaMA-Factory has {}",
                got.len(),
                expected.len()
            ));
            continue;
        }
        for (i, (row, (g_ids, g_labels, g_pos))) in expected.iter().zip(&got).enumerate() {
            let e_ids = ids(&row["ids"]);
            let e_labels = match row.get("label_ids") {
                Some(l) => ids(l).into_iter().map(i64::from).collect(),
                None => expected_labels(row),
            };
            if &e_ids != g_ids {
                let at = first_difference(&e_ids, g_ids);
                failures.push(format!(
                    "{name} row {i}: input ids differ at {at} (len {} vs {}): ours {:?} theirs {:?}; ours decode {:?}",
                    g_ids.len(),
                    e_ids.len(),
                    &g_ids[at..(at + 8).min(g_ids.len())],
                    &e_ids[at..(at + 8).min(e_ids.len())],
                    tok.decode(&g_ids[at.saturating_sub(4)..(at + 8).min(g_ids.len())], false).unwrap_or_default()
                ));
            } else if &e_labels != g_labels {
                let at = first_difference(&e_labels, g_labels);
                failures.push(format!(
                    "{name} row {i}: labels differ at {at}: ours {:?} theirs {:?}",
                    &g_labels[at..(at + 8).min(g_labels.len())],
                    &e_labels[at..(at + 8).min(e_labels.len())]
                ));
            }
            if let (Some(p), Some(e_pos)) = (g_pos, row.get("position_ids")) {
                assert_eq!(p, &ids(e_pos), "{name} row {i}: position ids");
            }
            if let (Encoded::Packed(rows), Some(mask)) = (&module.train, row.get("attention_mask"))
            {
                let m: Vec<i64> = mask
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect();
                assert_eq!(
                    rows[i].attention_mask(),
                    m,
                    "{name} row {i}: attention mask"
                );
            }
        }
        // Batches carry every item's tokens, no padding, and labels the model can shift.
        let batches = make_batches(&module.train, 3, Some(7)).unwrap();
        for b in &batches {
            let mb = b.to_model_batch().unwrap();
            assert_eq!(mb.shift_labels(&b.labels).unwrap().len(), b.input_ids.len());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from LLaMA-Factory:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `Template::ollama_modelfile` against LLaMA-Factory's own `get_ollama_modelfile` for every template in
/// tests/golden/ollama_modelfile.json (scripts/golden/ollama_modelfile.py), byte for byte: the file
/// `ferrotune export` writes next to the model for `ollama create`.
#[test]
fn ollama_modelfiles_match_llamafactory() {
    let Some(base) = smollm2_tokenizer() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ollama_modelfile.json");
    let golden: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (name, expected) in golden.as_object().unwrap() {
        let mut tok = base.clone();
        let options = DataOptions { template: Some(name.clone()), ..DataOptions::default() };
        let template = ferrotune_data::get_template_and_fix_tokenizer(&mut tok, &options).unwrap();
        let got = template.ollama_modelfile(&tok).unwrap();
        assert_eq!(got, expected.as_str().unwrap(), "template {name}");
    }
}
