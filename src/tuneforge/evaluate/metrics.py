"""BLEU-4 and ROUGE-1/2/L between generated and reference answers, scored as LLaMA-Factory does.

LLaMA-Factory (`ComputeSimilarity`) segments both texts with jieba (so Chinese is scored by words),
takes ROUGE F-scores from `rouge_chinese` on the space-joined words, and sentence BLEU-4 from nltk
on the *characters* with smoothing method 3; every score is x100, averaged over the rows. Using the
same libraries the same way keeps the numbers comparable with what users already have.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuneforge.errors import TuneforgeError

METRIC_KEYS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def _libraries():
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as err:
        raise TuneforgeError(
            f"BLEU/ROUGE scores need jieba, nltk and rouge-chinese ({err.name} is missing): "
            "pip install 'tuneforge[metrics]'"
        ) from None
    jieba.setLogLevel(60)  # no "Building prefix dict" chatter on every run
    return jieba, sentence_bleu, SmoothingFunction().method3, Rouge()


def similarity_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean BLEU-4 / ROUGE-1 / ROUGE-2 / ROUGE-L (x100, 4 decimals per row) over aligned pairs."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    jieba, sentence_bleu, smoothing, rouge = _libraries()
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    for prediction, reference in zip(predictions, references):
        hypothesis = " ".join(jieba.cut(prediction))
        reference_text = " ".join(jieba.cut(reference))
        if hypothesis.split() and reference_text.split():  # else ROUGE counts 0, as in LF
            scores = rouge.get_scores(hypothesis, reference_text)[0]
            for key in ("rouge-1", "rouge-2", "rouge-l"):
                totals[key] += round(scores[key]["f"] * 100, 4)
        bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=smoothing)
        totals["bleu-4"] += round(bleu * 100, 4)
    count = max(len(predictions), 1)
    return {key: totals[key] / count for key in METRIC_KEYS}
