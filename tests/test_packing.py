"""Packing (data.packing=true) is exact: a packed batch is its samples run alone.

LLaVA (vicuna_v1 path, 1-D RoPE) and the Qwen-VL families (M-RoPE: 4-row position ids, each sample's
own ``get_rope_index``), fp32, tiny random checkpoints (TEST_SIZE LLaVA, tests/vlm_families.py), SDPA on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from vlm_families import build_family

from vlmtune.core.config import load_config
from vlmtune.data.collate import IGNORE_INDEX, Encoded
from vlmtune.data.packing import (
    PackLayout,
    model_inputs,
    mrope_position_ids,
    pack_batch,
    plan_rows,
    segment_ids,
)
from vlmtune.data.records import load_records
from vlmtune.models import build_pipeline, packed_attention

TOL = 1e-5
# (family, LM attention): "sdpa_packed" = one causal SDPA call per sample, the whole micro-batch in one
# row (the default with packing); "sdpa" = transformers' dense block-diagonal mask, rows <= data.max_length
CASES = [
    ("llava", "sdpa_packed"),
    ("llava", "sdpa"),
    ("qwen2_vl", "sdpa_packed"),
    ("qwen2_vl", "sdpa"),
    ("qwen2_5_vl", "sdpa_packed"),
    ("qwen3_vl", "sdpa_packed"),
    ("llava-chat", "sdpa_packed"),  # llava-hf style: the same class driven by its processor + chat template
    ("llava_next", "sdpa_packed"),
    ("llava_onevision", "sdpa_packed"),
    ("idefics3", "sdpa_packed"),
    ("smolvlm", "sdpa_packed"),
    ("internvl", "sdpa_packed"),
]


@pytest.fixture(scope="module")
def mixed(shapes_cache) -> list[dict]:
    """Short VQA answers, longer captions and chat answers: lengths differ."""
    recs = load_records("shapes:vqa,caption,chat", split="train", n_images=8, cache_dir=shapes_cache)
    by_task: dict[str, list[dict]] = {}
    for r in recs:
        by_task.setdefault(r["task"], []).append(r)
    return [r for task in sorted(by_task) for r in by_task[task][:2]]


@pytest.fixture(scope="module")
def folders(model_dir, tmp_path_factory):
    built = {"llava": model_dir}

    def get(name: str):
        if name not in built:
            family = "llava" if name == "llava-chat" else name
            built[name] = build_family(family, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(c))
def pipe(request, folders):
    """The shapes LLaVA (vicuna_v1 path) or a tiny Qwen-VL checkpoint, packing on, no dropout."""
    name, attention = request.param
    folder = folders(name)
    cfg = load_config(
        "llava-dora",
        [f"model.name_or_path={folder}", "model.dtype=float32", "data.packing=true", "data.max_length=256"],
    )
    p = build_pipeline(cfg)
    assert p.model.config.text_config._attn_implementation == packed_attention.NAME
    p.model.config.text_config._attn_implementation = attention
    p.model.requires_grad_(True)
    p.model.eval()  # no dropout: the comparison is exact arithmetic
    return p


def alone(pipe, record: dict) -> dict:
    """``record`` collated on its own, unpacked."""
    pipe.cfg.data.packing = False
    try:
        return pipe.collate([record], train=True)
    finally:
        pipe.cfg.data.packing = True


def spans(batch: dict) -> list[tuple[int, int, int]]:
    """(row, start, end) of every sample of a packed batch, in ``batch['ids']`` order."""
    seg, out = segment_ids(batch["position_ids"]), []
    real = batch["attention_mask"].bool()
    for row in range(seg.shape[0]):
        for s in seg[row][real[row]].unique().tolist():
            cols = ((seg[row] == s) & real[row]).nonzero().flatten()
            out.append((row, int(cols[0]), int(cols[-1]) + 1))
    return out


def sample_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token CE of one sample: logits (n, V), labels (n,)."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")


def assert_grad_close(g: torch.Tensor, ref: torch.Tensor) -> None:
    """Within 1e-5 of the gradient's scale: absolute below magnitude 1, relative above (the tiny Qwen
    checkpoints, initializer_range 0.25, have gradients up to ~10, where fp32 rounding alone is ~1e-6
    relative)."""
    torch.testing.assert_close(g, ref, atol=TOL * max(1.0, ref.abs().max().item()), rtol=0)


def grads(loss: torch.Tensor, params: list[torch.Tensor], keep: bool = False) -> list[torch.Tensor]:
    """d loss / d params, zeros for parameters the loss does not use (e.g. CLIP's post-layernorm)."""
    out = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params, strict=True)]


def test_plan_rows_fills_rows_first_fit_decreasing() -> None:
    lengths = [50, 200, 120, 30, 100, 250]
    rows = plan_rows(lengths, 256)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    assert rows == [[5], [1, 0], [2, 4, 3]]
    assert plan_rows([300, 10], 256) == [[0], [1]]  # longer than a row: a row of its own


def test_pack_batch_layout() -> None:
    enc = [Encoded([1, 5, 6], [-100, 5, 6]), Encoded([1, 7], [7, 7])]
    batch, order = pack_batch(enc, pad_id=0, capacity=8)
    assert order == [0, 1]
    assert batch["input_ids"].tolist() == [[1, 5, 6, 1, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, 7]]  # a sample's first label never counts
    assert "attention_mask" not in model_inputs(batch)  # the mask comes from the position ids


def test_packed_losses_and_gradients_equal_each_sample_alone(pipe, mixed, monkeypatch) -> None:
    packed = pipe.collate(mixed, train=True)
    assert packed["input_ids"].shape[0] < len(mixed)  # it packs
    by_id = {r["id"]: r for r in mixed}
    found, find = [], packed_attention.packed_segments
    monkeypatch.setattr(packed_attention, "packed_segments", lambda *a: found.append(find(*a)) or found[-1])
    logits = pipe.model(**model_inputs(packed)).logits
    if packed_attention.attends_per_sample(pipe.model.config.text_config):  # one row, attention per sample
        assert (
            packed["input_ids"].shape[0] == 1 and found and all(f and len(f[0]) == len(mixed) for f in found)
        )
    else:  # rows of <= data.max_length, one dense block-diagonal mask per row
        assert packed["input_ids"].shape[1] <= pipe.cfg.data.max_length and not found
    params = [p for p in pipe.model.parameters() if p.requires_grad]
    for (row, a, b), rid in zip(spans(packed), packed["ids"], strict=True):
        single = alone(pipe, by_id[rid])
        ref_logits = pipe.model(**model_inputs(single)).logits[0]
        assert b - a == ref_logits.shape[0]
        torch.testing.assert_close(logits[row, a:b], ref_logits, atol=TOL, rtol=0)
        n = (single["labels"][0, 1:] != IGNORE_INDEX).sum()
        mine = sample_loss_sum(logits[row, a:b], packed["labels"][row, a:b]) / n
        ref = pipe.loss(single)
        assert abs(mine.item() - ref.item()) < TOL
        for g, rg in zip(grads(mine, params, keep=True), grads(ref, params), strict=True):
            assert_grad_close(g, rg)


def test_packed_attention_is_the_block_diagonal_masked_one() -> None:
    """One causal SDPA call per segment == SDPA with the dense block-diagonal causal mask (GQA, values and
    gradients); a batch without restarts is not treated as packed."""
    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    q = torch.randn(2, 4, 9, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 8, requires_grad=True) for _ in range(2))
    out, _ = packed_attention.sdpa_packed_attention(None, q, k, v, None, scaling=0.3, position_ids=pos)
    seg = segment_ids(pos)
    mask = (seg[:, :, None] == seg[:, None, :]) & torch.ones(9, 9, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask[:, None], scale=0.3
    ).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    w = torch.randn_like(ref)
    for g, rg in zip(grads((out * w).sum(), [q, k, v]), grads((ref * w).sum(), [q, k, v]), strict=True):
        torch.testing.assert_close(g, rg, atol=1e-5, rtol=0)
    assert packed_attention.packed_segments(pos, 9) == [[(0, 3), (3, 5), (5, 9)], [(0, 6), (6, 9)]]
    assert packed_attention.packed_segments(torch.arange(9).expand(2, 9), 9) is None


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size, enable_gqa):
    """torch's ``varlen_attn`` contract on CPU: (N, H, D) tokens, causal attention within each
    ``[cu[i], cu[i + 1])``; what the CUDA kernel computes, written from its documentation."""
    assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
    spans = list(zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True))
    assert max_q == max_k == max(b - a for a, b in spans)
    out = [
        F.scaled_dot_product_attention(
            q[a:b].transpose(0, 1),
            k[a:b].transpose(0, 1),
            v[a:b].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=enable_gqa,
        ).transpose(0, 1)
        for a, b in spans
    ]
    return torch.cat(out)


def test_packed_attention_varlen_path_equals_the_per_sample_loop(monkeypatch) -> None:
    """The CUDA flash-varlen branch (one call over the flattened rows, segment offsets ``cu``) gives the
    per-sample loop's output and gradients; run here with the kernel's CPU stand-in."""
    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    q = torch.randn(2, 4, 9, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 8, requires_grad=True) for _ in range(2))
    loop, _ = packed_attention.sdpa_packed_attention(None, q, k, v, None, scaling=0.3, position_ids=pos)
    calls = []
    monkeypatch.setattr(
        packed_attention, "_varlen_attn", lambda *a, **kw: calls.append(a[3]) or reference_varlen(*a, **kw)
    )
    monkeypatch.setattr(packed_attention, "varlen_applies", lambda query, dropout: True)
    varlen, _ = packed_attention.sdpa_packed_attention(None, q, k, v, None, scaling=0.3, position_ids=pos)
    assert [c.tolist() for c in calls] == [[0, 3, 5, 9, 15, 18]]  # row 1's segments start at 9
    torch.testing.assert_close(varlen, loop, atol=1e-6, rtol=0)
    w = torch.randn_like(loop)
    for g, rg in zip(grads((varlen * w).sum(), [q, k, v]), grads((loop * w).sum(), [q, k, v]), strict=True):
        torch.testing.assert_close(g, rg, atol=1e-6, rtol=0)


def test_varlen_kernel_only_where_it_runs() -> None:
    """CPU, fp32 or attention dropout keep the per-sample SDPA loop."""
    assert not packed_attention.varlen_applies(torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16), 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash varlen needs CUDA")
def test_varlen_kernel_on_cuda_equals_the_loop(monkeypatch) -> None:
    """On a GPU (sm80+, bf16): torch's flash varlen kernel == the per-sample SDPA loop, forward and grads."""
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability(dev)[0] < 8:
        pytest.skip("flash attention needs sm80+")
    torch.manual_seed(0)
    rows = [[100, 37, 200, 23], [5, 300, 55]]  # sample lengths per row, 360 tokens each
    pos = torch.tensor([[p for n in row for p in range(n)] for row in rows], device=dev)
    q = torch.randn(2, 8, 360, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k, v = (
        torch.randn(2, 2, 360, 64, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)
    )
    assert packed_attention.varlen_applies(q, 0.0)
    fast, _ = packed_attention.sdpa_packed_attention(None, q, k, v, None, position_ids=pos)
    monkeypatch.setattr(packed_attention, "varlen_applies", lambda query, dropout: False)
    loop, _ = packed_attention.sdpa_packed_attention(None, q, k, v, None, position_ids=pos)
    torch.testing.assert_close(fast.float(), loop.float(), atol=2e-2, rtol=0)
    w = torch.randn_like(loop)
    for g, rg in zip(grads((fast * w).sum(), [q, k, v]), grads((loop * w).sum(), [q, k, v]), strict=True):
        torch.testing.assert_close(g.float(), rg.float(), atol=5e-2, rtol=0)


def test_token_weighted_batch_loss_is_the_unpacked_one(pipe, mixed) -> None:
    packed = pipe.collate(mixed, train=True)
    pipe.cfg.data.packing = False
    try:
        padded = pipe.collate(mixed, train=True)
    finally:
        pipe.cfg.data.packing = True
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum()
    assert (packed["labels"] != IGNORE_INDEX).sum() == (padded["labels"][:, 1:] != IGNORE_INDEX).sum()
    params = [p for p in pipe.model.parameters() if p.requires_grad]
    loss_p, loss_u = pipe.loss(packed), pipe.loss(padded)
    assert abs(loss_p.item() - loss_u.item()) < TOL
    for g, rg in zip(grads(loss_p, params), grads(loss_u, params), strict=True):
        assert_grad_close(g, rg)


def image_rows(batch: dict, k: int) -> slice:
    """Rows of ``pixel_values`` of the k-th packed sample (one image per sample): LLaVA stacks images
    (N, 3, H, W); Qwen concatenates each image's ``prod(image_grid_thw)`` patches."""
    if "image_grid_thw" not in batch:
        return slice(k, k + 1)
    sizes = batch["image_grid_thw"].prod(-1).tolist()
    return slice(sum(sizes[:k]), sum(sizes[: k + 1]))


@torch.no_grad()
def test_no_attention_crosses_samples(pipe, mixed) -> None:
    packed = pipe.collate(mixed, train=True)
    where = spans(packed)
    base = pipe.model(**model_inputs(packed)).logits
    # perturb the text and the image of the first sample of a row that holds several samples
    row = next(r for r, _, _ in where if sum(1 for r2, _, _ in where if r2 == r) > 1)
    k, (_, a, b) = next((k, s) for k, s in enumerate(where) if s[0] == row)
    changed = {k: v.clone() for k, v in packed.items() if isinstance(v, torch.Tensor)}
    ids = changed["input_ids"]
    special = torch.tensor([*pipe.tokenizer.all_special_ids, pipe.image_token_id])
    text = (~torch.isin(ids[row, a:b], special)).nonzero().flatten()[1:] + a
    ids[row, text] = pipe.tokenizer("x", add_special_tokens=False)["input_ids"][0]
    assert len(packed["ids"]) == len(where) == len(packed.get("image_grid_thw", packed["pixel_values"]))
    pixels = changed["pixel_values"][image_rows(packed, k)]
    pixels += torch.randn_like(pixels)
    moved = pipe.model(**model_inputs(changed)).logits
    assert (moved[row, a:b] - base[row, a:b]).abs().max() > 1e-3  # the perturbation is seen
    for r, s, e in where:
        if (r, s, e) != (row, a, b):
            torch.testing.assert_close(moved[r, s:e], base[r, s:e], atol=1e-6, rtol=0)


def test_mrope_positions_are_each_samples_own() -> None:
    """Row 0: text positions restarting per sample; rows 1-3: the samples' own (3, n) positions; padding:
    its text positions in every row."""
    layout = PackLayout.plan([3, 2, 4], capacity=5)
    own = [torch.arange(n).expand(3, n) * torch.tensor([[1], [10], [100]]) for n in (3, 2, 4)]
    pos = mrope_position_ids(layout, own)
    assert layout.order == [2, 0, 1] and pos.shape == (4, 2, 5)
    assert pos[0].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert pos[2].tolist() == [[0, 10, 20, 30, 0], [0, 10, 20, 0, 10]]
    assert pos[3, 1].tolist() == [0, 100, 200, 0, 100]


def test_loss_on_supervised_positions_equals_the_full_logits_loss(pipe, mixed) -> None:
    """The pipeline runs ``lm_head`` on supervised positions only; transformers' own loss (all
    positions' logits) gives the same value and gradients."""
    pipe.cfg.data.packing = False
    try:
        batch = pipe.collate(mixed, train=True)
    finally:
        pipe.cfg.data.packing = True
    params = [p for p in pipe.model.parameters() if p.requires_grad]
    mine = pipe.loss(batch)
    ref = pipe.model(**model_inputs(batch), labels=batch["labels"]).loss
    assert abs(mine.item() - ref.item()) < TOL
    for g, rg in zip(grads(mine, params), grads(ref, params), strict=True):
        assert_grad_close(g, rg)


def test_sample_length_is_the_encoded_length(pipe, mixed) -> None:
    """``data.group_by_length`` sorts by the processed length (Qwen: after its image-grid expansion),
    negative for text-only records."""
    from vlmtune.data.records import record_images

    for r in mixed:
        n = pipe.sample_length(r)
        assert abs(n) == len(pipe.encode(r)) and (n > 0) == bool(record_images(r))
