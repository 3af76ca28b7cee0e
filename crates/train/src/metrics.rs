//! LLaMA-Factory's generation metrics (`ComputeSimilarity` in train/sft/metric.py), what `do_predict` with
//! `predict_with_generate` reports as `predict_bleu-4` and `predict_rouge-{1,2,l}`:
//!
//! - BLEU-4 on characters: nltk's `sentence_bleu([list(label)], list(pred))` with `SmoothingFunction().method3`
//!   (NIST geometric smoothing of empty n-gram precisions);
//! - ROUGE-1 / ROUGE-2 / ROUGE-L F-scores of the `rouge-chinese` package on jieba's words (`jieba.cut`, HMM
//!   on), all zero when either text has no word;
//! - each score x100 rounded to 4 decimals, then the mean of each over the examples.
//!
//! Checked against the Python packages by tests/predict_metrics.rs (golden: scripts/golden/predict_metrics.py).

use ferrotune_args::logging::py_round;
use ferrotune_args::Value;
use jieba_rs::Jieba;
use std::collections::{HashMap, HashSet};

/// One example's scores (or their means), x100 as LLaMA-Factory reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimilarityScores {
    pub bleu_4: f64,
    pub rouge_1: f64,
    pub rouge_2: f64,
    pub rouge_l: f64,
}

impl SimilarityScores {
    /// The metrics under `{prefix}_bleu-4`, ... (HF prefixes the compute_metrics keys with the split).
    pub fn metrics(&self, prefix: &str) -> Vec<(String, Value)> {
        [("bleu-4", self.bleu_4), ("rouge-1", self.rouge_1), ("rouge-2", self.rouge_2), ("rouge-l", self.rouge_l)]
            .into_iter()
            .map(|(k, v)| (format!("{prefix}_{k}"), Value::Float(v)))
            .collect()
    }

    /// `np.mean` of each score over `scores` (NaN for none, as numpy gives).
    pub fn mean(scores: &[SimilarityScores]) -> SimilarityScores {
        let n = scores.len() as f64;
        let avg = |f: fn(&SimilarityScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
        SimilarityScores { bleu_4: avg(|s| s.bleu_4), rouge_1: avg(|s| s.rouge_1), rouge_2: avg(|s| s.rouge_2), rouge_l: avg(|s| s.rouge_l) }
    }
}

/// The scorer: holds jieba's dictionary (built once, about a second, as Python's `jieba` does on first use).
pub struct Similarity {
    jieba: Jieba,
}

impl Default for Similarity {
    fn default() -> Self {
        Similarity::new()
    }
}

impl Similarity {
    pub fn new() -> Similarity {
        Similarity { jieba: Jieba::new() }
    }

    /// `list(jieba.cut(text))`: accurate mode with the HMM for unknown words (spaces come back as words).
    ///
    /// jieba-rs keeps ASCII identifiers joined by `.`, `_` or `-` as one word (`LLaMA-Factory`, `a_b`,
    /// `1.2.3`) where Python jieba 0.42 (what LLaMA-Factory runs) splits them with its HMM's `re_skip`
    /// (`[a-zA-Z0-9]+(?:\.\d+)?%?`); such words are split again the Python way. The dictionary has no ASCII word
    /// with those characters, so a word holding one can only come from that rule, and re-splitting a word Python
    /// itself produced changes nothing.
    pub fn words<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        for token in self.jieba.cut(text, true) {
            let w = token.word;
            if w.len() > 1 && w.is_ascii() && w.contains(['.', '_', '-']) {
                python_skip_split(w, &mut out);
            } else {
                out.push(w);
            }
        }
        out
    }

    /// Scores of one decoded prediction against its decoded label.
    pub fn score(&self, pred: &str, label: &str) -> SimilarityScores {
        let hypothesis = self.words(pred).join(" ");
        let reference = self.words(label).join(" ");
        let [rouge_1, rouge_2, rouge_l] = if py_split(&hypothesis).next().is_none() || py_split(&reference).next().is_none() {
            [0.0; 3]
        } else {
            rouge_f_scores(&hypothesis, &reference)
        };
        let x100 = |v: f64| py_round(v * 100.0, 4);
        SimilarityScores { bleu_4: x100(char_bleu_4(pred, label)), rouge_1: x100(rouge_1), rouge_2: x100(rouge_2), rouge_l: x100(rouge_l) }
    }
}

/// `re_skip.split(block)` of Python jieba's HMM (`finalseg`), empty pieces dropped: runs matching
/// `[a-zA-Z0-9]+(?:\.\d+)?%?` and the gaps between them.
fn python_skip_split<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let b = s.as_bytes();
    let (mut gap, mut i) = (0, 0);
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i < b.len() && b[i] == b'%' {
            i += 1;
        }
        if gap < start {
            out.push(&s[gap..start]);
        }
        out.push(&s[start..i]);
        gap = i;
    }
    if gap < b.len() {
        out.push(&s[gap..]);
    }
}

/// Python's `str.isspace` for one character: Unicode White_Space plus the ASCII separators 0x1C-0x1F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` (no argument): runs of whitespace separate, no empty pieces.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|w| !w.is_empty())
}

// ---- BLEU (nltk.translate.bleu_score)

/// `sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)` with the default
/// weights (0.25,) * 4, on Unicode code points.
pub fn char_bleu_4(pred: &str, label: &str) -> f64 {
    let hyp: Vec<char> = pred.chars().collect();
    let reference: Vec<char> = label.chars().collect();
    // modified_precision(n) as an unnormalised fraction: clipped matches over max(1, hypothesis n-grams).
    let precision = |n: usize| -> (usize, usize) {
        let mut counts: HashMap<&[char], usize> = HashMap::new();
        for g in hyp.windows(n) {
            *counts.entry(g).or_default() += 1;
        }
        let mut ref_counts: HashMap<&[char], usize> = HashMap::new();
        for g in reference.windows(n) {
            *ref_counts.entry(g).or_default() += 1;
        }
        let numerator = counts.iter().map(|(g, &c)| c.min(ref_counts.get(g).copied().unwrap_or(0))).sum();
        let denominator = counts.values().sum::<usize>().max(1);
        (numerator, denominator)
    };
    let fractions: Vec<(usize, usize)> = (1..=4).map(precision).collect();
    if fractions[0].0 == 0 {
        return 0.0;
    }
    let (hyp_len, ref_len) = (hyp.len() as f64, reference.len() as f64);
    // brevity_penalty; hyp_len == 0 cannot reach here (no unigram matched).
    let bp = if hyp_len > ref_len { 1.0 } else { (1.0 - ref_len / hyp_len).exp() };
    // method3: the k-th empty precision becomes 1 / (2^k * denominator).
    let mut k = 1;
    let mut log_sum = 0.0;
    for (num, den) in fractions {
        let p = if num == 0 {
            let p = 1.0 / (2f64.powi(k) * den as f64);
            k += 1;
            p
        } else {
            num as f64 / den as f64
        };
        log_sum += 0.25 * p.ln();
    }
    bp * log_sum.exp()
}

// ---- ROUGE (rouge_chinese.Rouge().get_scores(hyp, ref)[0], metrics rouge-1 / rouge-2 / rouge-l, stat "f")

/// `Rouge.cut_sent`: a newline after sentence-ending punctuation (`。！？?`, six dots, two `…`, or one of those
/// followed by a closing quote), unless a closing quote / clause punctuation follows; then `rstrip` and split
/// on newlines.
fn cut_sent(para: &str) -> Vec<String> {
    let mut text: Vec<char> = para.chars().collect();
    // The four `re.sub(r'(A)(B)', r'\1\n\2', ...)` passes, in order; each A has one fixed length, so a left-to-right
    // scan that resumes after each match is exactly re.sub's non-overlapping search.
    type Head = fn(&[char]) -> Option<usize>;
    let passes: [(Head, fn(char) -> bool); 4] = [
        (|t| matches!(t.first(), Some('。' | '！' | '？' | '?')).then_some(1), |c| c != '”' && c != '’'),
        (|t| (t.len() >= 6 && t[..6].iter().all(|&c| c == '.')).then_some(6), |c| c != '”' && c != '’'),
        (|t| (t.len() >= 2 && t[..2].iter().all(|&c| c == '…')).then_some(2), |c| c != '”' && c != '’'),
        (
            |t| (t.len() >= 2 && matches!(t[0], '。' | '！' | '？' | '?') && matches!(t[1], '”' | '’')).then_some(2),
            |c| !matches!(c, '，' | '。' | '！' | '？' | '?'),
        ),
    ];
    for (head, tail_ok) in passes {
        let mut out = Vec::with_capacity(text.len() + 8);
        let mut i = 0;
        while i < text.len() {
            match head(&text[i..]) {
                Some(len) if i + len < text.len() && tail_ok(text[i + len]) => {
                    out.extend_from_slice(&text[i..i + len]);
                    out.push('\n');
                    out.push(text[i + len]);
                    i += len + 1;
                }
                _ => {
                    out.push(text[i]);
                    i += 1;
                }
            }
        }
        text = out;
    }
    let joined: String = text.into_iter().collect();
    joined.trim_end_matches(py_space).split('\n').map(str::to_string).collect()
}

/// `_get_scores`' preprocessing: sentences (`cut_sent`, empty pieces dropped, inner whitespace collapsed), then
/// `_split_into_words`: each sentence split on single spaces (a whitespace-only piece gives one empty word).
fn rouge_words(text: &str) -> Vec<String> {
    cut_sent(text)
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| py_split(&s).collect::<Vec<_>>().join(" "))
        .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// `f_r_p_rouge_n`'s F: `2 * p * r / (p + r + 1e-8)`.
fn f_score(overlap: f64, hyp: f64, reference: f64) -> f64 {
    let p = if hyp == 0.0 { 0.0 } else { overlap / hyp };
    let r = if reference == 0.0 { 0.0 } else { overlap / reference };
    2.0 * ((p * r) / (p + r + 1e-8))
}

/// ROUGE-N with `exclusive=True`: the sets of distinct n-grams.
fn rouge_n(hyp: &[String], reference: &[String], n: usize) -> f64 {
    let grams = |w: &[String]| -> HashSet<Vec<String>> { w.windows(n).map(|g| g.to_vec()).collect() };
    let (h, r) = (grams(hyp), grams(reference));
    f_score(h.intersection(&r).count() as f64, h.len() as f64, r.len() as f64)
}

/// `rouge_l_summary_level` as rouge-chinese computes it: the LCS of all reference words and all hypothesis words.
fn rouge_l(hyp: &[String], reference: &[String]) -> f64 {
    let mut row = vec![0usize; hyp.len() + 1];
    for r in reference {
        let mut diag = 0;
        for (j, h) in hyp.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if r == h { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    let lcs = row[hyp.len()] as f64;
    let (m, n) = (reference.len() as f64, hyp.len() as f64);
    let (r, p) = (lcs / m, lcs / n);
    2.0 * ((p * r) / (p + r + 1e-8))
}

/// F-scores of ROUGE-1, ROUGE-2 and ROUGE-L for space-joined words (both with at least one word).
fn rouge_f_scores(hypothesis: &str, reference: &str) -> [f64; 3] {
    let (h, r) = (rouge_words(hypothesis), rouge_words(reference));
    [rouge_n(&h, &r, 1), rouge_n(&h, &r, 2), rouge_l(&h, &r)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_sent_splits_as_the_regexes_do() {
        assert_eq!(cut_sent("一。二！三"), ["一。", "二！", "三"]);
        // A closing quote stays with its sentence; clause punctuation after it does not start a new one.
        assert_eq!(cut_sent("他说：“好。”然后"), ["他说：“好。”", "然后"]);
        assert_eq!(cut_sent("好。”，然后"), ["好。”，然后"]);
        assert_eq!(cut_sent("a......b"), ["a......", "b"]);
        assert_eq!(cut_sent("a……b"), ["a……", "b"]);
        // The second of two enders is the first's follower, so it is not split again.
        assert_eq!(cut_sent("a。。b"), ["a。", "。b"]);
        assert_eq!(cut_sent("end? \n"), ["end?"]);
    }

    #[test]
    fn identifiers_split_as_python_jieba_does() {
        let s = Similarity::new();
        // Python: jieba.lcut("用LLaMA-Factory和v1.2.3，a_b 50%") (jieba 0.42.1).
        assert_eq!(
            s.words("用LLaMA-Factory和v1.2.3，a_b 50%"),
            ["用", "LLaMA", "-", "Factory", "和", "v1.2", ".", "3", "，", "a", "_", "b", " ", "50%"]
        );
    }

    #[test]
    fn bleu_edge_cases() {
        assert_eq!(char_bleu_4("", "abc"), 0.0);
        assert_eq!(char_bleu_4("abc", ""), 0.0);
        assert!((char_bleu_4("hello world", "hello world") - 1.0).abs() < 1e-12);
    }
}
