"""COCO caption metrics via ``pycocoevalcap`` (Chen et al., 2015): BLEU-1..4, METEOR, ROUGE-L, CIDEr.

Captions are lower-cased and tokenised by the Stanford PTB tokenizer and punctuation tokens dropped,
exactly as the COCO caption server does; that tokenizer and METEOR run on Java. Quirk kept: the tokenizer's
``-lowerCase`` also lower-cases its bracket escapes, so "-lrb-" / "-rrb-" / "-lcb-" / "-rcb-" tokens are not
in pycocoevalcap's (upper-case) drop list and are scored, as are multi-character tokens like "!!!". Without Java, BLEU,
ROUGE-L and CIDEr can still be computed with ``tokenizer="simple"`` (a regex approximation; the numbers
are then not comparable with published ones, and the metrics say so).
"""

from __future__ import annotations

import re
import shutil

from vlmtune.eval.errors import EvalError

ALL_METRICS = ("bleu", "meteor", "rouge", "cider")
_SIMPLE_PUNCT = re.compile(r"[^\w\s']|'(?!\w)|(?<!\w)'")


def require_java(why: str) -> None:
    if shutil.which("java") is None:
        raise EvalError(
            f"`java` not found on PATH: {why} needs a Java runtime (e.g. apt-get install default-jre-headless);"
            " or score without it: caption_metrics=bleu,rouge,cider with tokenizer=simple"
        )


def simple_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Java-free approximation of the PTB tokenizer + punctuation removal."""
    return {k: [" ".join(_SIMPLE_PUNCT.sub(" ", c.lower()).split()) for c in v] for k, v in captions.items()}


def ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    require_java("the PTB tokenizer")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def score_captions(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    metrics: tuple[str, ...] = ALL_METRICS,
    tokenizer: str = "ptb",
) -> tuple[dict, dict[str, dict]]:
    """Corpus metrics (x100, 2 decimals) and per-image scores for ``predictions[id]`` vs ``references[id]``."""
    if not predictions:
        raise EvalError("no captions to score")
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise EvalError(f"unknown caption metric '{unknown[0]}'; choose from {', '.join(ALL_METRICS)}")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise EvalError(f"caption {missing[0]} has no reference captions")
    if tokenizer not in ("ptb", "simple"):
        raise EvalError(f"caption tokenizer must be ptb or simple, got '{tokenizer}'")
    if "meteor" in metrics:
        require_java("METEOR")
    tok = ptb_tokenize if tokenizer == "ptb" else simple_tokenize
    keys = list(predictions)
    # one tokenizer call for both sides (one Java start)
    joined = {f"r{i}": references[k] for i, k in enumerate(keys)}
    joined.update({f"p{i}": [predictions[k] or ""] for i, k in enumerate(keys)})
    tokens = tok(joined)
    gts = {i: tokens[f"r{i}"] for i in range(len(keys))}
    res = {i: [tokens[f"p{i}"][0] if tokens.get(f"p{i}") else ""] for i in range(len(keys))}

    corpus: dict[str, float] = {}
    per_image: dict[str, dict] = {k: {} for k in keys}

    def put(name: str, score: float, scores) -> None:
        corpus[name] = round(100.0 * float(score), 2)
        for k, s in zip(keys, scores):
            per_image[k][name] = round(100.0 * float(s), 2)

    for name in metrics:
        if name == "bleu":
            from pycocoevalcap.bleu.bleu import Bleu

            score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                put(f"BLEU-{n + 1}", score[n], scores[n])
        elif name == "meteor":
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                score, scores = meteor.compute_score(gts, res)
            finally:
                meteor.meteor_p.kill()
                meteor.meteor_p.wait()
            put("METEOR", score, scores)
        elif name == "rouge":
            from pycocoevalcap.rouge.rouge import Rouge

            score, scores = Rouge().compute_score(gts, res)
            put("ROUGE-L", score, scores)
        elif name == "cider":
            from pycocoevalcap.cider.cider import Cider

            score, scores = Cider().compute_score(gts, res)
            put("CIDEr", score, scores)
    corpus["count"] = len(keys)
    if tokenizer == "simple":
        corpus["tokenizer"] = "simple (not comparable with the official PTB-tokenised numbers)"
    return corpus, per_image
