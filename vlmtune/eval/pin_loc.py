"""``pin-loc``: object localisation as text, scored by mIoU (PIN, Dorkenwald et al., CVPR 2024, Table 1).

Each ``grounding`` record names one object (``boxes[0].label``); the model is asked for its box with
the LLaVA-1.5 grounding prompt and answers ``[x1,y1,x2,y2]`` normalised to [0, 1]. The first such
box in the text is parsed; no box scores IoU 0 (the paper's "raw" frozen model). Reported:

    mIoU    mean IoU over all objects
    mIoU_M  over medium objects:  medium_min <= area / image area < large_min
    mIoU_L  over large objects:   area / image area >= large_min

Size bins are COCO's (medium 32^2..96^2 px, large >= 96^2 px) taken relative to a 640x480 image, so
they apply to any resolution; override with ``score_options={"medium_min": ..., "large_min": ...}``.
A bin without objects reports ``None``.
"""

from __future__ import annotations

from vlmtune.data.templates import GROUNDING_PROMPT, parse_box
from vlmtune.eval.benchmarks import BENCHMARKS, Benchmark, register

COCO_AREA = 640 * 480
MEDIUM_MIN = 32**2 / COCO_AREA  # 0.0033
LARGE_MIN = 96**2 / COCO_AREA  # 0.030


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes (any consistent units); degenerate boxes give 0."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def gt_box(record: dict) -> list[float]:
    """The referred object's box normalised by the image size (``meta.width/height``)."""
    x1, y1, x2, y2 = record["boxes"][0]["bbox"]
    meta = record.get("meta") or {}
    w, h = float(meta.get("width", 1.0)), float(meta.get("height", 1.0))
    return [x1 / w, y1 / h, x2 / w, y2 / h]


def parse_prediction(text: str, record: dict | None = None) -> list[float] | None:
    """The first ``[a,b,c,d]`` in ``text`` (corners reordered so x1 <= x2, y1 <= y2), else None."""
    box = parse_box(text)
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_pin_loc(
    rows: list[dict], medium_min: float = MEDIUM_MIN, large_min: float = LARGE_MIN, **_
) -> dict:
    """Rows ``{prediction: box | None, box: gt box}`` -> mIoU overall / medium / large (+ counts)."""
    ious, medium, large = [], [], []
    for row in rows:
        gt = row["box"]
        iou = box_iou(row["prediction"], gt) if row["prediction"] is not None else 0.0
        ious.append(iou)
        area = max(0.0, gt[2] - gt[0]) * max(0.0, gt[3] - gt[1])
        if area >= large_min:
            large.append(iou)
        elif area >= medium_min:
            medium.append(iou)
    return {
        "mIoU": _mean(ious),
        "mIoU_M": _mean(medium),
        "mIoU_L": _mean(large),
        "count": len(rows),
        "count_M": len(medium),
        "count_L": len(large),
        "parsed": sum(r["prediction"] is not None for r in rows) / max(len(rows), 1),
    }


def prompt(record: dict) -> str:
    return GROUNDING_PROMPT.format(label=record["boxes"][0]["label"])


if "pin-loc" not in BENCHMARKS:
    register(
        Benchmark(
            "pin-loc", "grounding", prompt, parse_prediction, lambda r: {"box": gt_box(r)}, score_pin_loc,
            ("box",), description="PIN localisation: mIoU / mIoU_M / mIoU_L of generated boxes",
            defaults={"max_new_tokens": 24},
        )
    )  # fmt: skip
