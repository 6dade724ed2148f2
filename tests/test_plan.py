"""``vlmtune plan``: parameter counts from config.json alone (meta device), activations measured under
FakeTensorMode, the per-GPU table for DDP / FSDP2 / offload / QLoRA, on the tiny test LLaVA and on
config-only folders with the published LLaVA-1.5-7B/13B and Qwen2.5-VL-7B sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlmtune import cli
from vlmtune.core.config import ConfigError, load_config
from vlmtune.plan import GiB, SavedTensorCounter, format_plan, make_plan, parse_memory

# published configs (hub config.json values of llava-hf/llava-1.5-{7b,13b}-hf, Qwen/Qwen2.5-VL-7B-Instruct)
CLIP_L_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
LLAMA = dict(model_type="llama", vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5)
LLAVA_15 = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
}
CLIP_L_336_PARAMS = 303_507_456


def llava_15_params(size: str) -> int:
    """Closed form: CLIP-L/336 + 2-layer MLP projector + Llama (embeddings, lm_head, layers, norm).
    7b: 7,063,427,072 (the llava-hf/llava-1.5-7b-hf model card)."""
    h, inter, layers = (LLAVA_15[size][k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    projector = 1024 * h + h + h * h + h
    language = 2 * 32064 * h + layers * (4 * h * h + 3 * h * inter + 2 * h) + h
    return CLIP_L_336_PARAMS + projector + language


def write_llava_15(folder: Path, size: str) -> Path:
    from transformers import LlavaConfig

    dims = LLAVA_15[size]
    text = {**LLAMA, **dims, "num_key_value_heads": dims["num_attention_heads"], "tie_word_embeddings": False}
    LlavaConfig(
        text_config=text,
        vision_config=CLIP_L_336,
        image_token_index=32000,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=576,
    ).save_pretrained(folder)
    return folder


def write_qwen25_vl_7b(folder: Path) -> Path:
    from transformers import Qwen2_5_VLConfig

    Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=False,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            hidden_act="silu",
        ),
        image_token_id=151655,
        video_token_id=151656,
        tie_word_embeddings=False,
    ).save_pretrained(folder)
    return folder


def planned_and_built(recipe: str, overrides: list[str], gpus: int = 2):
    """``(plan, pipeline with its adapters, parameters)``: the plan's parameter counts are asserted to be the
    built model's (all and trainable)."""
    from vlmtune.adapters import attach
    from vlmtune.models import build_pipeline

    cfg = load_config(recipe, overrides)
    plan = make_plan(cfg, gpus=gpus, gpu_mem=GiB)
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    params = list(pipe.model.parameters())
    assert plan.counts.total_numel == sum(p.numel() for p in params)
    assert plan.counts.trainable_numel == sum(p.numel() for p in params if p.requires_grad) > 0
    return plan, pipe, params


def rows(plan) -> dict:
    return {r.strategy: r for r in plan.table}


def test_tiny_folder_counts_match_the_real_model_and_activations_match_a_real_forward(model_dir, capsys):
    overrides = [f"model.name_or_path={model_dir}", "model.dtype=float32", "train.batch_size=4"]
    assert cli.main(["plan", "llava-dora", *overrides, "--gpus", "2", "--gpu-mem", "1GB"]) == 0
    out = capsys.readouterr().out
    for strategy in ("DDP", "FSDP2", "FSDP2+offload"):
        assert f"\n{strategy} " in out
    assert "QLoRA" in out and "DoRA on 4-bit weights is refused" in out

    plan, pipe, params = planned_and_built("llava-dora", overrides)
    assert plan.batch == 2  # each of 2 processes takes half of train.batch_size=4

    # the same language-model forward on real tensors saves the same bytes as under FakeTensorMode
    model = pipe.model.train()
    counter = SavedTensorCounter(params)
    seq, hidden = plan.seq, model.config.text_config.hidden_size
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        h = model.model.language_model(inputs_embeds=torch.zeros(2, seq, hidden), use_cache=False)
        logits = model.lm_head(h.last_hidden_state)
        torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), torch.zeros(2 * seq, dtype=torch.long)
        )
    assert counter.total > 0
    assert abs(plan.acts.saved - counter.total) <= 0.05 * counter.total, (plan.acts.saved, counter.total)


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_llava_15_config_only_folder(tmp_path, size):
    folder = write_llava_15(tmp_path / f"llava-1.5-{size}", size)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    common = [f"model.name_or_path={folder}", "data.max_length=2048", "train.batch_size=128"]
    common += ["model.gradient_checkpointing=true"]
    lora = make_plan(load_config("llava-lora", common), gpus=8, gpu_mem=parse_memory("80GB"))
    ft = make_plan(load_config("llava-ft", common), gpus=8, gpu_mem=parse_memory("80GB"))
    base = llava_15_params(size)
    assert llava_15_params("7b") == 7_063_427_072
    h = LLAVA_15[size]["hidden_size"]
    frozen = lora.counts.total_numel - lora.counts.trainable_numel  # trainable: LoRA + the projector
    assert frozen + (1024 * h + h + h * h + h) == base and ft.counts.total_numel == base
    assert lora.batch == 16 and lora.seq == 2048 and lora.image_tokens == 576
    r, f = rows(lora), rows(ft)
    # full fine-tuning (vision tower frozen): bf16 weights; grads (+ the flat all-reduce buffer) and two
    # AdamW states of every trainable value, 2 bytes each
    trainable = base - CLIP_L_336_PARAMS
    assert (f["DDP"].params, f["DDP"].grads, f["DDP"].optimizer) == (2 * base, 4 * trainable, 4 * trainable)
    assert not ft.fits(f["DDP"]) and ft.fits(f["FSDP2"])
    assert f["FSDP2"].optimizer == f["DDP"].optimizer // 8
    assert lora.fits(r["DDP"]) and lora.fits(r["QLoRA"]) and r["QLoRA"].params < r["DDP"].params / 2.5
    assert f["QLoRA"].note.startswith("n/a")


def test_qwen25_vl_7b_config_only_folder(tmp_path):
    """Not a LLaVA: built on meta from its transformers config class, towers of vlmtune.plan."""
    folder = write_qwen25_vl_7b(tmp_path / "qwen2.5-vl-7b")
    overrides = [f"model.name_or_path={folder}", "data.max_length=2048", "train.batch_size=8"]
    plan = make_plan(load_config("llava-ft", overrides), gpus=8, gpu_mem=parse_memory("80GB"))
    assert plan.counts.total_numel == 8_292_166_656  # the Qwen/Qwen2.5-VL-7B-Instruct model card
    assert plan.image_tokens == 1024 and len(plan.acts.unit_saved) == 28  # one per decoder layer
    text = format_plan(plan)
    assert "8.29B parameters" in text and "\nFSDP2 " in text and "n/a: language tower method 'full'" in text
    r = rows(plan)
    assert not plan.fits(r["DDP"]) and plan.fits(r["FSDP2"])


def test_plan_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no readable config.json"):
        make_plan(load_config("llava-lora", [f"model.name_or_path={tmp_path}"]), 1, GiB)
    with pytest.raises(ConfigError, match="--gpu-mem: expected a size like 80GB, got 'lots'"):
        parse_memory("lots")
    assert parse_memory("80GB") == parse_memory("80") == 80 * GiB
    with pytest.raises(ConfigError, match="model.pipeline=vit is not supported"):
        make_plan(load_config("vit-lora"), 1, GiB)


def test_plan_error_names_the_command_once(capsys):
    """The CLI adds ``vlmtune plan: error:``; the message itself does not repeat the command."""
    assert cli.main(["plan", "vit-lora"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlmtune plan: error: model.pipeline=vit is not supported"), err
    assert err.count("vlmtune plan") == 1 and len(err.splitlines()) == 1


def test_qwen_vl_vision_tower_note_says_in_words_what_is_not_estimated(family_folder, capsys):
    """Qwen2-VL's ``visual`` takes (patches, grid_thw): the note says why its activations are left out,
    with no internal exception name."""
    folder = family_folder("qwen2_vl")
    assert cli.main(["plan", "llava-lora", f"model.name_or_path={folder}", "--gpus", "1"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note: vision-tower")]
    assert notes == [
        "note: vision-tower activations not estimated: it lays its patches out from the image grid at run "
        "time (Qwen-VL), which this shape-only plan cannot run; the activ column counts the language model "
        "only (add the tower's for a trainable tower)"
    ], out
    assert "Error" not in out


@pytest.mark.parametrize(
    "family, image_tokens",
    [
        ("idefics3", (32 // 8) ** 2 // 2**2),
        ("smolvlm", (32 // 8) ** 2 // 2**2),
        ("mllama", 1),
        ("internvl", None),
    ],
)
def test_families_without_llavas_module_names_plan_like_their_training_builds_them(
    family, image_tokens, family_folder, capsys
):
    """Round-5 report: ``plan`` tracebacked on Idefics3 / SmolVLM (no ``model.language_model``), Mllama (no
    ``model.visual``) and InternVL (list image_size). The towers are found where the pipelines find them; the
    counts are the trained model's, the language model's every decoder layer is measured."""
    from vlmtune.plan import language_model

    folder = family_folder(family)
    overrides = [f"model.name_or_path={folder}", "model.dtype=float32", "train.batch_size=2"]
    assert cli.main(["plan", "llava-lora", *overrides, "--gpus", "2"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    plan, pipe, _ = planned_and_built("llava-lora", overrides)
    expected = image_tokens or pipe.model.config.image_seq_length
    assert plan.image_tokens == expected
    layers = pipe.model.config.text_config.num_hidden_layers
    # Mllama mixes self- and cross-attention layer classes: no layer units (train.fsdp's), measured as a whole
    assert len(plan.acts.unit_saved) == (0 if family == "mllama" else layers) and plan.acts.saved > 0
    assert language_model(pipe.model) is pipe.model.get_submodule(pipe.towers["language"][0])
