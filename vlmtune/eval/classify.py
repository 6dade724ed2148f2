"""``classify``: top-1 accuracy of ``classify`` records (the ``vit`` pipeline's benchmark).

The pipeline's ``generate`` returns class names; a prediction is right when it equals the record's
``meta.label_name`` (or the label index as text).
"""

from __future__ import annotations

from vlmtune.eval.benchmarks import BENCHMARKS, Benchmark, register


def label_name(record: dict) -> str:
    return str((record.get("meta") or {}).get("label_name", record["label"]))


def score_classify(rows: list[dict], **_) -> dict:
    correct = sum(str(r["prediction"]).strip() == r["label_name"] for r in rows)
    return {"accuracy": 100.0 * correct / max(len(rows), 1), "count": len(rows)}


if "classify" not in BENCHMARKS:
    register(
        Benchmark(
            "classify", "classify", lambda r: "", lambda text, r: text.strip(),
            lambda r: {"label_name": label_name(r)}, score_classify, ("label_name",),
            description="image classification top-1 accuracy (%)",
        )
    )  # fmt: skip
