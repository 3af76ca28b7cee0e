//! `ferrotune_train::metrics` against LLaMA-Factory's `ComputeSimilarity` run on the Python packages (jieba,
//! nltk, rouge-chinese): tests/golden/predict_metrics.json, written by scripts/golden/predict_metrics.py.

use ferrotune_train::metrics::{Similarity, SimilarityScores};

/// Scores are x100 and rounded to 4 decimals on both sides. The only float work that differs is BLEU's sum of
/// four logs (Python's `math.fsum` vs a plain sum, ~1e-16 relative) and numpy's pairwise mean, far below one
/// rounding step (1e-4); 0.01 is the bound and still catches any real difference (one n-gram or one
/// word more or less moves a score by whole points on these short texts).
const TOL: f64 = 0.01;

#[test]
fn scores_match_llamafactory_compute_similarity() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/predict_metrics.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let scorer = Similarity::new();
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    let mut all = Vec::new();
    for case in doc["cases"].as_array().unwrap() {
        let (pred, label) = (case["pred"].as_str().unwrap(), case["label"].as_str().unwrap());
        for (side, text) in [("pred_words", pred), ("label_words", label)] {
            let expected: Vec<&str> = case[side].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
            assert_eq!(scorer.words(text), expected, "jieba words of {text:?}");
        }
        let got = scorer.score(pred, label);
        for (key, value) in [("bleu-4", got.bleu_4), ("rouge-1", got.rouge_1), ("rouge-2", got.rouge_2), ("rouge-l", got.rouge_l)] {
            let want = num(case, key);
            assert!((value - want).abs() <= TOL, "{key} of pred {pred:?} / label {label:?}: {value} vs {want}");
        }
        all.push(got);
    }
    let mean = SimilarityScores::mean(&all);
    let avg = &doc["average"];
    for (key, value) in [("bleu-4", mean.bleu_4), ("rouge-1", mean.rouge_1), ("rouge-2", mean.rouge_2), ("rouge-l", mean.rouge_l)] {
        assert!((value - num(avg, key)).abs() <= TOL, "mean {key}: {value} vs {}", num(avg, key));
    }
    let names: Vec<String> = mean.metrics("predict").into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"]);
}
