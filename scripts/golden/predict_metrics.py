"""Golden scores for ferrotune's predict metrics (`ferrotune_train::metrics`): LLaMA-Factory's `ComputeSimilarity`
(src/llamafactory/train/sft/metric.py) on decoded (prediction, label) strings.

Per pair, as upstream: jieba-segment both texts; ROUGE-1/2/L F-scores from `rouge_chinese.Rouge` on the
space-joined words (all zero when either side has no word); character-level BLEU-4 from nltk's
`sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)`; each score x100 and
rounded to 4 decimals; then the mean of each list (`np.mean`).

Needs no torch. In a venv outside the repository:

    python3 -m venv /tmp/metricsvenv && /tmp/metricsvenv/bin/pip install nltk jieba rouge-chinese numpy
    /tmp/metricsvenv/bin/python scripts/golden/predict_metrics.py

Writes tests/golden/predict_metrics.json (the pairs, jieba's words for each side, every score and the averages).
"""
import json
import os

import jieba
import nltk
import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden", "predict_metrics.json")

# (prediction, label): English, Chinese, mixed, empty sides, punctuation that rouge-chinese splits sentences on,
# whitespace-only text, repeated tokens, exact match, no overlap at all, ASCII identifiers with . _ - inside.
PAIRS = [
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("Hello world", "Hello world"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("我爱北京天安门", "我爱北京天安门，天安门上太阳升。"),
    ("今天天气很好，我们去公园散步吧！", "今天天气不错，我们一起去公园散步。"),
    ("机器学习是人工智能的一个分支。", "深度学习是机器学习的一个分支。"),
    ("我在用Python写LLaMA-Factory的代码", "我用 Python 写代码，LLaMA-Factory 很好用。"),
    ("GPU显存不够了，batch size改成2试试", "显存不足时把 batch size 调小，比如 2。"),
    ("", "A non-empty label."),
    ("A non-empty prediction.", ""),
    ("", ""),
    ("   ", "spaces only in the prediction"),
    ("这是第一句。这是第二句！这是第三句？", "这是第一句。这是另一句！"),
    ("Wait...... what? Really?! Yes.", "Wait... what? Yes!"),
    ("他说：“你好。”然后走了……再见……", "他说“你好”就走了。"),
    ("the the the the the the the", "the cat"),
    ("哈哈哈哈哈哈哈哈", "哈哈"),
    ("a b c d e f g", "h i j k l m n"),
    ("Line one.\nLine two.\n\nLine three.", "Line one. Line two. Line three."),
    ("Numbers: 3.14, 2.718 and 42!", "Numbers 3.14 and 42."),
    ("x", "x y"),
    ("The answer is 42", "42"),
    ("苹果 apple 香蕉 banana", "apple 苹果 banana 香蕉"),
    ("Tab\tseparated\ttext", "Tab separated text"),
    ("升级到v2.0.1后，LLaMA-Factory和my_model都能用", "LLaMA-Factory v2.0 支持 my_model。准确率 95.5%"),
]


def score(pred: str, label: str) -> dict:
    hypothesis = list(jieba.cut(pred))
    reference = list(jieba.cut(label))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
    out = {"pred": pred, "label": label, "pred_words": hypothesis, "label_words": reference}
    for k, v in result.items():
        out[k] = round(v["f"] * 100, 4)
    bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    out["bleu-4"] = round(bleu * 100, 4)
    return out


def main() -> None:
    cases = [score(p, l) for p, l in PAIRS]
    keys = ["bleu-4", "rouge-1", "rouge-2", "rouge-l"]
    average = {k: float(np.mean([c[k] for c in cases])) for k in keys}
    doc = {
        "generator": "ferrotune scripts/golden/predict_metrics.py",
        "versions": {"jieba": jieba.__version__, "nltk": nltk.__version__, "numpy": np.__version__},
        "cases": cases,
        "average": average,
    }
    with open(GOLDEN, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(GOLDEN)}: {len(cases)} pairs, average {average}")


if __name__ == "__main__":
    main()
