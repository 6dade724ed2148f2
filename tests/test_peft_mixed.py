"""Mixed methods per tower in one adapter folder, exact in peft 0.21 (issue 20, acceptance 1).

``vlmtune train llava-dora`` with DoRA on the language tower, LoRA on the vision tower and the projector
trained writes one PEFT folder (``use_dora: true``; each LoRA layer carries ``m = ||W0 + s B A||_c`` so
that peft's DoRA forward is that LoRA; the projector as ``modules_to_save``). Checked on two model
shapes (LLaVA: Llama + CLIP; Qwen2-VL: GQA Qwen2 with q/k/v biases + its own vision tower):

* ``PeftModel.from_pretrained(base, folder)`` gives vlmtune's logits within 1e-5 (relative to the
  largest logit), and holds the trained projector weights;
* vlmtune's ``load_adapter`` gives the same logits with and without ``towers=``, building LoRA layers
  on the vision tower and DoRA layers on the language tower either way;
* the folder records the base folder that was given (peft loads it from there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from toy_models import perturb_trainable
from vlm_families import build_family

from vlmtune.adapters import AdapterError, DoraLinear, LoraLinear, adapter_layers, load_adapter
from vlmtune.core.config import load_config
from vlmtune.presets import build_pipeline

peft = pytest.importorskip("peft")

PER_TOWER = [  # the README's per-tower example; a high lr so that 3 steps move every adapter visibly
    "adapters.language.method=dora",
    "adapters.language.targets=[default]",
    "adapters.language.r=4",
    "adapters.language.alpha=8",
    "adapters.vision.method=lora",
    "adapters.vision.targets=[default]",
    "adapters.vision.r=4",
    "adapters.vision.alpha=8",
    "adapters.projector.method=full",
    "train.lr=2e-2",
    "train.max_steps=3",
    "train.batch_size=2",
    "train.eval_at_end=false",
    "train.eval_at_start=false",
    "model.dtype=float32",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(name)`` -> (base folder, run folder, batch) of a 3-step ``vlmtune train`` run."""
    from vlmtune.cli import main

    root = tmp_path_factory.mktemp("mixed")
    pixels = (np.random.RandomState(0).rand(40, 48, 3) * 255).astype("uint8")
    Image.fromarray(pixels).save(root / "0.png")
    record = {"task": "vqa", "image": str(root / "0.png"), "question": "What color is the circle?",
              "answers": ["red"] * 10}  # fmt: skip
    data = root / "vqa.jsonl"
    data.write_text("".join(json.dumps({**record, "id": f"q{i}"}) + "\n" for i in range(4)))
    done: dict[str, tuple[Path, Path, list[dict]]] = {}

    def get(name: str):
        if name not in done:
            base = build_family(name, root / name)
            run = root / f"run-{name}"
            common = [f"model.name_or_path={base}", f"data.train={data}", *PER_TOWER]
            assert main(["train", "llava-dora", *common, "--output-dir", str(run), "--quiet"]) == 0
            done[name] = (base, run, [{**record, "id": "q0"}])
        return done[name]

    return get


def vlmtune_model(base: Path, adapter: Path | None, with_towers: bool = True):
    cfg = load_config("llava-dora", [f"model.name_or_path={base}", "model.dtype=float32"])
    pipe = build_pipeline(cfg)
    if adapter is not None:
        load_adapter(pipe.model, adapter, pipe.towers if with_towers else None)
    return pipe, pipe.model.eval()


def logits(model, batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits.float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


FAMILIES = ["llava", "qwen2_vl"]


@pytest.mark.parametrize("name", FAMILIES)
def test_mixed_dora_lora_projector_folder_loads_in_peft_with_the_same_logits(name, trained):
    from transformers import AutoModelForImageTextToText

    base, run, records = trained(name)
    adapter = run / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True and cfg["base_model_name_or_path"] == str(base)
    pipe, ours = vlmtune_model(base, adapter)
    batch = pipe.collate(records, train=False)
    expected = logits(ours, batch)
    assert rel(logits(vlmtune_model(base, None)[1], batch), expected) > 1e-3, "training moved nothing"

    ref = AutoModelForImageTextToText.from_pretrained(cfg["base_model_name_or_path"])
    loaded = peft.PeftModel.from_pretrained(ref, adapter).eval()
    diff = rel(logits(loaded, batch), expected)
    assert diff < TOL, f"{name}: peft logits differ by {diff:.2e} (relative)"

    projector = [p for p in cfg["modules_to_save"] if "vision" not in p and "language" not in p]
    assert projector, cfg["modules_to_save"]
    ours_params = dict(ours.named_parameters())
    held = {n: p for n, p in loaded.named_parameters() if ".modules_to_save.default." in n}
    assert held, "peft holds no modules_to_save copy"
    for n, p in held.items():
        key = n.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        assert torch.equal(p, ours_params[key]), key
    base_params = dict(vlmtune_model(base, None)[1].named_parameters())
    assert any(not torch.equal(ours_params[k], base_params[k]) for k in ours_params if projector[0] in k)


@pytest.mark.parametrize("name", FAMILIES)
def test_mixed_folder_loads_in_vlmtune_with_and_without_towers(name, trained):
    base, run, records = trained(name)
    pipe, with_towers = vlmtune_model(base, run / "adapter")
    _, without = vlmtune_model(base, run / "adapter", with_towers=False)
    batch = pipe.collate(records, train=False)
    assert rel(logits(without, batch), logits(with_towers, batch)) < TOL
    for model in (with_towers, without):
        kinds = {p: type(layer) for p, layer in adapter_layers(model)}
        vision = {k for p, k in kinds.items() if p.startswith(tuple(pipe.towers["vision"]))}
        language = {k for p, k in kinds.items() if p.startswith(tuple(pipe.towers["language"]))}
        assert vision == {LoraLinear} and language == {DoraLinear}, (vision, language)


def test_lora_magnitude_changed_after_saving_is_refused(trained, tmp_path):
    """A LoRA layer's magnitude moved (e.g. trained further as DoRA in peft) no longer is LoRA: refused."""
    import shutil

    base, run, _ = trained("llava")
    folder = tmp_path / "adapter"
    shutil.copytree(run / "adapter", folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = next(k for k in tensors if "vision_tower" in k and k.endswith("lora_magnitude_vector"))
    tensors[key] = tensors[key] * 1.01
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="is LoRA in vlmtune_adapter.json but its lora_magnitude_vector"):
        vlmtune_model(base, folder)


def test_trained_norm_layers_are_modules_to_save_that_peft_restores(tmp_path):
    """``trainable_norms`` on both towers: every norm layer is a ``modules_to_save`` entry (full path) and
    peft's model reproduces vlmtune's logits; nothing is left for ``trainable_extras``."""
    from toy_models import LLAVA_TOWERS, inputs, tiny_llava

    from vlmtune.adapters import AdapterSpec, attach, save_adapter

    model = tiny_llava()
    specs = {
        "language": AdapterSpec(method="dora", r=2, targets=["q", "v"], trainable_norms=True),
        "vision": AdapterSpec(method="lora", r=2, targets=["q", "v"], trainable_norms=True),
        "projector": AdapterSpec(method="full"),
    }
    attach(model, LLAVA_TOWERS, specs)
    perturb_trainable(model, 0.1)
    expected = model.eval()(**inputs()).logits
    save_adapter(model, tmp_path / "a", specs)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    norms = [m for m in cfg["modules_to_save"] if "norm" in m]
    assert len(norms) == 2 * 2 + 2 + 3, cfg[
        "modules_to_save"
    ]  # CLIP: 2 per layer x 2 + pre/post; Llama: 2 + final
    assert "model.multi_modal_projector" in cfg["modules_to_save"]
    assert not (tmp_path / "a" / "trainable_extras.safetensors").exists()
    loaded = peft.PeftModel.from_pretrained(tiny_llava(), tmp_path / "a").eval()
    with torch.no_grad():
        diff = rel(loaded(**inputs()).logits, expected)
    assert diff < TOL, f"peft logits differ by {diff:.2e} (relative)"


def test_a_trained_module_list_is_saved_by_its_items_so_peft_can_wrap_them(tmp_path):
    """peft refuses ``modules_to_save`` on a ModuleList (Qwen3-VL's ``deepstack_merger_list``): its items go."""
    from torch import nn

    from vlmtune.adapters import AdapterSpec, attach, save_adapter

    def toy() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Module()
        model.lm = nn.Module()
        model.lm.q_proj = nn.Linear(8, 8)
        model.mergers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        model.forward = lambda x: model.lm.q_proj(model.mergers[1](model.mergers[0](x)))
        return model

    model = toy()
    specs = {
        "language": AdapterSpec(method="lora", r=2, targets=["q_proj"]),
        "projector": AdapterSpec(method="full"),
    }
    attach(model, {"language": ["lm"], "projector": ["mergers"]}, specs)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    x = torch.randn(3, 8)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["mergers.0", "mergers.1"]
    loaded = peft.PeftModel.from_pretrained(toy(), tmp_path / "a").eval()
    with torch.no_grad():
        assert (
            rel(
                loaded.base_model.model.lm.q_proj(
                    loaded.base_model.model.mergers[1](loaded.base_model.model.mergers[0](x))
                ),
                expected,
            )
            < TOL
        )


def test_a_peft_written_folder_with_modules_to_save_by_short_name_loads_in_vlmtune(tmp_path):
    """peft matches ``modules_to_save`` by suffix (``multi_modal_projector``); vlmtune reads it the same way."""
    from toy_models import inputs, tiny_llava

    cfg = peft.LoraConfig(
        r=2, target_modules=["q_proj"], modules_to_save=["multi_modal_projector"], use_dora=True
    )
    ref = peft.get_peft_model(tiny_llava(), cfg)
    perturb_trainable(ref, 0.1)
    ref.eval()
    with torch.no_grad():
        expected = ref(**inputs()).logits
    ref.save_pretrained(tmp_path / "a")
    ours = load_adapter(tiny_llava(), tmp_path / "a").eval()
    assert {type(layer) for _, layer in adapter_layers(ours)} == {DoraLinear}
    with torch.no_grad():
        diff = rel(ours(**inputs()).logits, expected)
    assert diff < TOL, f"vlmtune logits differ by {diff:.2e} (relative)"
