"""Every supported VLM family through the llava pipeline: load strictly, adapt per tower, train, generate
in batch, merge into the source class, load the adapter folder in peft.

Each family is a tiny random checkpoint from ``tests/vlm_families.py`` (its own config class, image
processor, processor and chat template), saved and loaded back the way a hub checkpoint is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlmtune.adapters.attach import adapter_layers, attach
from vlmtune.core.config import ConfigError, load_config
from vlmtune.models import build_pipeline
from vlmtune.models.vlm import FamilyPipeline

FAMILY_NAMES = [
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "paligemma",
    "gemma3",
    "idefics3",
    "smolvlm",
    "mllama",
    "internvl",
]


@pytest.fixture(scope="module")
def records(two_images) -> list[dict]:
    """A single-turn VQA record and a two-turn conversation, on images of two sizes."""
    first, second = two_images
    return [
        {"id": "q0", "task": "vqa", "image": str(first), "question": "What color is the circle?",
         "answers": ["red"] * 10},
        {"id": "c1", "task": "conversation", "image": str(second), "conversations": [
            {"from": "human", "value": "<image>\nHow many shapes?"}, {"from": "gpt", "value": "2"},
            {"from": "human", "value": "Is there a triangle?"}, {"from": "gpt", "value": "no, there is none."}]},
    ]  # fmt: skip


def for_family(name: str, records: list[dict]) -> list[dict]:
    """The records a family takes: PaliGemma's prefix/suffix format holds one question and one answer (a
    multi-turn record is refused), so its conversation keeps the first turn."""
    if name != "paligemma":
        return records
    return [
        {**r, "conversations": r["conversations"][:2]} if r["task"] == "conversation" else r for r in records
    ]


PER_TOWER = [  # the README's per-tower example: DoRA on the LM, LoRA on the vision tower, projector trained
    "adapters.language.method=dora",
    "adapters.language.targets=[default]",
    "adapters.language.r=8",
    "adapters.language.alpha=16",
    "adapters.vision.method=lora",
    "adapters.vision.targets=[default]",
    "adapters.vision.r=8",
    "adapters.vision.alpha=16",
    "adapters.projector.method=full",
]


def pipeline(folder: Path, *overrides: str):
    torch.manual_seed(0)
    cfg = load_config(
        "llava-dora",
        [f"model.name_or_path={folder}", "model.dtype=float32", "data.max_length=512", *overrides],
    )
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    return cfg, pipe


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_per_tower_adapters_train_and_every_adapter_gets_a_gradient(name, family_folder, records):
    cfg, pipe = pipeline(family_folder(name), *PER_TOWER, "adapters.language.dropout=0")
    assert isinstance(pipe, FamilyPipeline)
    batch = pipe.collate(for_family(name, records), train=True)
    assert (batch["labels"] != -100).sum() > 0
    trainable = [p for p in pipe.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=3e-2, weight_decay=0.0)
    pipe.model.train()
    losses = []
    for step in range(30):
        loss = pipe.loss(batch)
        opt.zero_grad()
        loss.backward()
        if step == 1:  # after one update lora_B != 0, so every adapter tensor has a gradient path
            for tower in ("language", "vision"):
                layers = [(n, m) for n, m in adapter_layers(pipe.model) if under(n, pipe.towers[tower])]
                assert layers, f"no adapter attached in the {tower} tower"
                for n, m in layers:
                    for pn, p in m.named_parameters():
                        if p.requires_grad:
                            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n}.{pn} got no gradient"
            projector = [p for n, p in pipe.model.named_parameters() if under(n, pipe.towers["projector"])]
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in projector)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_language_tower_alone_adapts_nothing_else(name, family_folder):
    cfg, pipe = pipeline(
        family_folder(name), "adapters.language.targets=[default]", "adapters.projector.method=frozen"
    )
    language = pipe.towers["language"]
    trainable = [n for n, p in pipe.model.named_parameters() if p.requires_grad]
    assert trainable and all(under(n, language) for n in trainable), [
        n for n in trainable if not under(n, language)
    ]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_batched_left_padded_generation_equals_one_at_a_time(name, family_folder, records):
    cfg, pipe = pipeline(family_folder(name), *PER_TOWER)
    records = for_family(name, records)
    batch = pipe.collate(records, train=False)
    assert (batch["attention_mask"][:, -1] == 1).all(), "prompts must be left-padded"
    together = pipe.generate(batch, max_new_tokens=6)
    alone = [pipe.generate(pipe.collate([r], train=False), max_new_tokens=6)[0] for r in records]
    assert together == alone


def _perturb(model) -> None:
    """Make every adapter non-trivial (as after training): random B and magnitudes off ||W0||."""
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for pn, p in layer.named_parameters():
                if "lora_B" in pn:
                    p.normal_(0, 0.05)
                elif "magnitude" in pn:
                    p.mul_(1 + 0.1 * torch.rand_like(p))


def _logits(model, batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits.float()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_merge_writes_the_source_class_with_its_processor_and_the_same_logits(
    name, family_folder, records, tmp_path
):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg, pipe = pipeline(family_folder(name), *PER_TOWER)
    _perturb(pipe.model)
    pipe.model.eval()
    batch = pipe.collate(for_family(name, records), train=True)
    expected = _logits(pipe.model, batch)
    out = pipe.save_merged(tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    source = json.loads((family_folder(name) / "config.json").read_text())
    assert merged.config.model_type == source["model_type"]
    assert type(merged).__name__ == source["architectures"][0]
    assert type(processor).__name__ == type(pipe.processor).__name__
    assert processor.chat_template == pipe.processor.chat_template
    assert (out / "generation_config.json").is_file()
    diff = (_logits(merged, batch) - expected).abs().max() / expected.abs().max()
    assert diff < 1e-4, f"{name}: merged logits differ by {diff:.2e} (relative)"


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_folder_loads_in_peft_with_the_same_logits(name, method, family_folder, records, tmp_path):
    import peft
    from transformers import AutoModelForImageTextToText

    from vlmtune.adapters.peft_io import save_adapter

    cfg, pipe = pipeline(
        family_folder(name),
        f"adapters.language.method={method}",
        "adapters.language.targets=[default]",
        "adapters.language.r=4",
        "adapters.language.alpha=8",
        "adapters.projector.method=frozen",
    )
    _perturb(pipe.model)
    pipe.model.eval()
    batch = pipe.collate(for_family(name, records), train=True)
    expected = _logits(pipe.model, batch)
    save_adapter(pipe.model, tmp_path / "adapter", cfg.adapters.specs(), str(family_folder(name)))
    base = AutoModelForImageTextToText.from_pretrained(family_folder(name))
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    # relative to the largest logit (|logits| reach ~10 here: absolute fp32 rounding is ~1e-6 per unit)
    diff = (_logits(loaded, batch) - expected).abs().max() / expected.abs().max()
    assert diff < 1e-5, f"{name}/{method}: peft logits differ by {diff:.2e} (relative)"


def _edit_config(folder: Path, dst: Path, **changes) -> Path:
    shutil.copytree(folder, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def mismatched_folders(family_folder, root: Path) -> dict[str, tuple[Path, str]]:
    """Checkpoints that must not load, and the words their one-line error must contain."""
    next_as_llava = _edit_config(family_folder("llava_next"), root / "next-as-llava", model_type="llava",
                                 architectures=["LlavaForConditionalGeneration"])  # fmt: skip
    llava = json.loads((family_folder("llava") / "config.json").read_text())
    llava["text_config"]["intermediate_size"] = 96  # the weights were saved with 64
    resized = _edit_config(family_folder("llava"), root / "resized", text_config=llava["text_config"])
    fuyu = _edit_config(family_folder("llava"), root / "fuyu", model_type="fuyu")
    text_only = root / "llama"
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, vocab_size=64)).save_pretrained(text_only)  # fmt: skip
    return {
        "next-as-llava": (next_as_llava, "1 unexpected tensor(s) (image_newline)"),
        "resized": (resized, "mis-sized tensor(s)"),
        "fuyu": (fuyu, "model_type 'fuyu' is not a supported VLM family"),
        "llama": (text_only, "model_type 'llama' is not a supported VLM family"),
        "missing": (root / "no-such-folder", "no such folder"),
    }


def test_unsupported_or_mismatched_checkpoints_stop_with_one_line(family_folder, tmp_path):
    for case, (folder, words) in mismatched_folders(family_folder, tmp_path).items():
        with pytest.raises(ConfigError) as err:
            build_pipeline(load_config("llava-dora", [f"model.name_or_path={folder}"]))
        message = str(err.value)
        assert "\n" not in message and words in message, (case, message)
        assert f"model.name_or_path='{folder}'" in message, (case, message)


def test_a_relative_path_that_is_neither_a_folder_nor_a_readable_hub_id_says_both(monkeypatch, tmp_path):
    """`runs/no-such-run` has the form of a hub id: when no checkpoint of that name can be read either, the
    line says there is no such folder (not only the hub client's error)."""
    import transformers

    from vlmtune.models.loading import read_model_type

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        read_model_type("runs/no-such-run", "runs/no-such-run")
    assert str(err.value) == (
        "model.name_or_path='runs/no-such-run': no such folder, and no hub checkpoint of that name could be read "
        "(We couldn't connect to 'https://huggingface.co' to load the files)"
    )


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_train_eval_merge_commands_on_every_family(name, family_folder, records, tmp_path):
    """The README's per-tower command on each family, end to end through the CLI: `vlmtune train llava-dora
    model.name_or_path=FOLDER` (DoRA language, LoRA vision, projector trained) -> `vlmtune eval` on the run
    folder -> `vlmtune merge` (with its own logit check) -> a folder of the same model_type and processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmtune.cli import main

    data = tmp_path / "vqa.jsonl"
    vqa = [r for r in records if r["task"] == "vqa"]
    data.write_text("".join(json.dumps({**r, "id": f"q{i}"}) + "\n" for i, r in enumerate(vqa * 4)))
    common = [f"model.name_or_path={family_folder(name)}", f"data.train={data}", f"data.eval={data}"]
    run = tmp_path / "run"
    argv = ["train", "llava-dora", *common, *PER_TOWER, "train.max_steps=2", "train.batch_size=2",
            "eval.batch_size=2", "--output-dir", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert main(["eval", "shapes-vqa", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0  # fmt: skip
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()) == 4
    assert main(["merge", str(run), str(tmp_path / "merged")]) == 0
    source = json.loads((family_folder(name) / "config.json").read_text())["model_type"]
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").config.model_type == source
    processor = AutoProcessor.from_pretrained(tmp_path / "merged")
    assert type(processor).__name__ == type(AutoProcessor.from_pretrained(family_folder(name))).__name__


def test_info_prints_per_tower_modules_and_share_without_loading_weights(family_folder, capsys):
    from vlmtune.cli import main

    folder = family_folder("qwen2_vl")
    assert main(["info", "llava-dora", f"model.name_or_path={folder}", "adapters.vision.method=lora"]) == 0
    out = capsys.readouterr().out
    assert "Qwen2VLForConditionalGeneration (model_type 'qwen2_vl')" in out
    assert "vision     lora    fc1 x2, fc2 x2, proj x2, qkv x2" in out  # Qwen2-VL's own names, 2 blocks
    assert "language   dora    down_proj x2, gate_proj x2, k_proj x2, o_proj x2, q_proj x2, up_proj x2" in out
    assert "projector  full    merger x1" in out
    assert "% of base" in out


@pytest.mark.parametrize(
    "key, family",
    [
        ("data.packing", "gemma3"),
        ("data.packing", "paligemma"),
        ("data.packing", "mllama"),
        ("data.cache_vision_features", "qwen2_vl"),
    ],
)  # packing works for the causal-LM families (tests/test_packing.py); these attend bidirectionally or across
def test_packing_and_feature_cache_are_refused_for_other_families_before_loading(key, family, family_folder):
    with pytest.raises(
        ConfigError, match=rf"config key '{key}' is implemented for LLaVA-1.5 .* not for this '{family}'"
    ):
        build_pipeline(
            load_config("llava-dora", [f"model.name_or_path={family_folder(family)}", f"{key}=true"])
        )
