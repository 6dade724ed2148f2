"""``conversation``: evaluation on your own conversation data (LLaVA JSON, ShareGPT / OpenAI ``messages``,
``datasets`` files; see :mod:`vlmtune.data.conversation_formats`).

Two views of the same records:

- **Generation**, on the last assistant turn: the model gets the conversation up to that turn (every earlier
  turn as written, the benchmark prompt is left empty so the pipeline renders the record's own history) and
  generates greedily; the whole stripped answer is compared with the reference by
  ``exact_match`` and ``f1`` (token F1), both after the normalisation of the SQuAD v1.1 evaluation script
  (``evaluate-v1.1.py``: lower case, punctuation removed, the articles a/an/the removed, whitespace
  collapsed). Per-example values are written to ``predictions.jsonl``; the metrics are means in percent.
- **Likelihood**, on every assistant turn (teacher-forced, as in training): ``loss`` = the summed
  next-token cross-entropy of all supervised tokens divided by their number (a per-token mean over the
  whole set, not a mean of per-record means), ``perplexity = exp(loss)``, ``loss_tokens`` = the count.

Used by default by ``vlmtune train`` when every ``data.eval`` record is a conversation
(:func:`benchmark_for`).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

from vlmtune.eval.benchmarks import Benchmark, get_benchmark, register, stripped
from vlmtune.eval.errors import EvalError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1 ``f1_score``: harmonic mean of token precision and recall over the normalised tokens
    (bag of words with counts); 0 when nothing is shared (two empty answers included, as in SQuAD)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def last_answer(record: dict) -> str:
    """The value of the record's last assistant (``gpt``) turn."""
    answers = [t["value"] for t in record.get("conversations") or [] if t.get("from") == "gpt"]
    if not answers:
        raise EvalError(
            f"record {record.get('id')!r} has no assistant turn to score (benchmark conversation)"
        )
    return answers[-1]


def _references(record: dict) -> dict:
    return {"reference": last_answer(record)}


def score_conversation(rows: list[dict]) -> dict:
    """``exact_match`` and ``f1`` (means over rows, %); each row gets its own two values."""
    if not rows:
        raise EvalError("no predictions to score")
    for row in rows:
        row["exact_match"] = exact_match(row["prediction"], row["reference"])
        row["f1"] = token_f1(row["prediction"], row["reference"])
    n = len(rows)
    return {
        "exact_match": round(100.0 * sum(r["exact_match"] for r in rows) / n, 2),
        "f1": round(100.0 * sum(r["f1"] for r in rows) / n, 2),
        "count": n,
    }


def answer_loss(pipeline, records: list[dict], batch_size: int = 16) -> dict:
    """Teacher-forced loss of every assistant token of ``records``, batch by batch through the pipeline's
    own training ``collate`` and ``loss`` (a per-token mean over the batch): each batch mean is weighted
    by its number of supervised tokens, so ``loss = sum CE / #tokens`` over the whole set."""
    import torch

    from vlmtune.data.collate import IGNORE_INDEX
    from vlmtune.models.base import move_batch, truncation_counts_kept

    model = pipeline.model
    was_training = model.training
    device = next((p.device for p in model.parameters()), None)
    shifted = not getattr(model.config, "is_encoder_decoder", False)  # decoder-only: t predicts t + 1
    total, tokens = 0.0, 0
    model.eval()
    try:
        with torch.inference_mode(), truncation_counts_kept(pipeline):
            for start in range(0, len(records), batch_size):
                batch = pipeline.collate(records[start : start + batch_size], train=True)
                labels = batch["labels"][:, 1:] if shifted else batch["labels"]
                n = int((labels != IGNORE_INDEX).sum())
                if n:
                    batch = move_batch(batch, device) if device is not None else batch
                    total += float(pipeline.loss(batch)) * n
                    tokens += n
    finally:
        model.train(was_training)
    if not tokens:
        return {"loss_tokens": 0}
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "loss_tokens": tokens}


def benchmark_for(records: list[dict], configured: str) -> str:
    """``conversation`` when every record is a conversation and ``configured`` reads another task (the
    recipes' ``shapes-vqa`` would stop on the first record without a 'question'), else ``configured``."""
    if records and all(r.get("task") == "conversation" for r in records):
        if get_benchmark(configured).task != "conversation":
            return "conversation"
    return configured


register(
    Benchmark(
        "conversation", "conversation", lambda r: "", stripped, _references, score_conversation,
        ("reference",), description="your own conversations: exact match + token F1 (SQuAD normalisation) on "
        "the last answer, per-token loss / perplexity of every answer", defaults={"max_new_tokens": 64},
        model_metrics=answer_loss,
    ),
    overwrite=True,
)  # fmt: skip
