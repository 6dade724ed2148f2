"""BLIP-2 (OPT and Flan-T5 language models) and InstructBLIP (Llama/Vicuna-style) through the Q-Former
pipeline (vlmtune.models.qformer): recipes through the CLI, answer-only labels, the instruction reaching the
Q-Former, per-part adapters and learning rates, merge into the source class, peft parity, PIN at the seam.

Fixtures: tiny random checkpoints from ``tests/vlm_families.py`` saved and loaded back like hub checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vlm_families import build_family

from vlmtune.adapters.attach import adapter_layers, attach
from vlmtune.core.config import ConfigError, load_config
from vlmtune.core.errors import AdapterError, DataError
from vlmtune.data.collate import IGNORE_INDEX
from vlmtune.data.packing import model_inputs
from vlmtune.models import build_pipeline
from vlmtune.models.qformer import SITE, QFormerPipeline

RECIPE = {"blip_2": "blip2-dora", "blip_2_t5": "blip2-dora", "instructblip": "instructblip-dora"}
NAMES = list(RECIPE)


@pytest.fixture(scope="module")
def records(two_images) -> list[dict]:
    """A VQA record and a caption record on two images of different sizes."""
    first, second = two_images
    return [
        {"id": "q0", "task": "vqa", "image": str(first), "question": "What color is the circle?",
         "answers": ["red"] * 10},
        {"id": "c1", "task": "caption", "image": str(second),
         "captions": ["A blue square and a yellow circle."]},
    ]  # fmt: skip


def pipeline(folder: Path, recipe: str, *overrides: str, attach_adapters: bool = True):
    torch.manual_seed(0)
    cfg = load_config(recipe, [f"model.name_or_path={folder}", "model.dtype=float32", *overrides])
    pipe = build_pipeline(cfg)
    if attach_adapters:
        attach(pipe.model, pipe.towers, cfg.adapters.specs())
    return cfg, pipe


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


NO_DROPOUT = ["adapters.language.dropout=0", "adapters.qformer.dropout=0", "adapters.vision.dropout=0"]


# ---------------------------------------------------------------- acceptance 1: train
@pytest.mark.parametrize("name", NAMES)
def test_recipe_trains_through_the_cli(name, family_folder, records, tmp_path):
    from vlmtune.cli import main

    data, vqa = tmp_path / "train.jsonl", tmp_path / "vqa.jsonl"
    data.write_text(
        "".join(json.dumps({**r, "id": f"{r['id']}-{i}"}) + "\n" for i in range(2) for r in records)
    )
    vqa.write_text("".join(json.dumps({**records[0], "id": f"q{i}"}) + "\n" for i in range(4)))
    run = tmp_path / "run"
    argv = ["train", RECIPE[name], f"model.name_or_path={family_folder(name)}", f"data.train={data}",
            f"data.eval={vqa}", "train.max_steps=2", "train.batch_size=2", "eval.batch_size=4",
            "eval.max_new_tokens=3", "--output-dir", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((run / "adapter" / "vlmtune_adapter.json").read_text())
    assert meta["specs"]["qformer"]["method"] == meta["specs"]["language"]["method"] == "dora"
    assert meta["specs"]["vision"]["method"] == "frozen"
    assert json.loads((run / "eval.json").read_text())["tuned"]["count"] == 4
    assert main(["eval", "shapes-vqa", "--model", str(run), "--data", str(vqa), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0  # fmt: skip
    assert main(["merge", str(run), str(tmp_path / "merged")]) == 0  # with its own logit check
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert (
        merged["architectures"]
        == json.loads((family_folder(name) / "config.json").read_text())["architectures"]
    )


def test_info_prints_the_qformer_tower_plan(family_folder, capsys):
    from vlmtune.cli import main

    assert main(["info", "instructblip-dora", f"model.name_or_path={family_folder('instructblip')}"]) == 0
    out = capsys.readouterr().out
    assert "InstructBlipForConditionalGeneration (model_type 'instructblip')" in out
    # 2 layers x (self + cross attention output, query FFN x2) + layer 0's text FFN x2 (the last one is unused)
    assert "qformer    dora    dense x10, key x4, language_projection x1, query x4, value x4" in out
    assert "language   dora    down_proj x2, gate_proj x2, k_proj x2, o_proj x2, q_proj x2" in out


def test_model_type_dispatch_and_wrong_checkpoint_is_one_line(family_folder):
    _, pipe = pipeline(
        family_folder("blip_2"), "llava-dora", "adapters.projector.method=frozen", attach_adapters=False
    )  # pipeline llava -> by model_type
    assert isinstance(pipe, QFormerPipeline)
    with pytest.raises(
        ConfigError, match="no 'projector' tower .* use the blip2-dora, blip2-lora, blip2-pin"
    ):
        pipeline(family_folder("blip_2"), "llava-dora", attach_adapters=False)  # the llava recipes train one
    with pytest.raises(ConfigError) as err:
        build_pipeline(
            load_config(
                "blip2-dora",
                [f"model.name_or_path={build_family('llava', family_folder('blip_2').parent / 'llava')}"],
            )
        )
    assert "\n" not in str(err.value) and "model.pipeline=blip2 takes blip-2, instructblip" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_loss_halves_on_a_repeated_batch_and_every_part_gets_gradients(name, family_folder, records):
    cfg, pipe = pipeline(family_folder(name), RECIPE[name], "adapters.vision.method=lora", *NO_DROPOUT)
    batch = pipe.collate(records, train=True)
    trainable = [p for p in pipe.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=3e-2, weight_decay=0.0)
    pipe.model.train()
    losses = []
    for step in range(30):
        loss = pipe.loss(batch)
        opt.zero_grad()
        loss.backward()
        if step == 1:  # after one update lora_B != 0, so every adapter tensor has a gradient path
            for tower in ("vision", "qformer", "language"):
                layers = [(n, m) for n, m in adapter_layers(pipe.model) if under(n, pipe.towers[tower])]
                assert layers, f"no adapter attached in the {tower} tower"
                for n, m in layers:
                    for pn, p in m.named_parameters():
                        if p.requires_grad:
                            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n}.{pn} got no gradient"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_qformer_tower_adapts_the_qformer_and_projection_only(family_folder):
    _, pipe = pipeline(family_folder("blip_2"), "blip2-lora", "adapters.language.method=frozen")
    adapted = [n for n, _ in adapter_layers(pipe.model)]
    assert "language_projection" in adapted
    assert any(n.startswith("qformer.encoder.layer.0.crossattention.attention.query") for n in adapted)
    assert all(n.startswith(("qformer.", "language_projection")) for n in adapted), adapted
    trainable = [n for n, p in pipe.model.named_parameters() if p.requires_grad]
    assert trainable and all(under(n, pipe.towers["qformer"]) for n in trainable)


def test_qformer_lr_is_its_own_with_zero_meaning_train_lr(family_folder):
    from vlmtune.train.optim import param_groups

    for lr, expected in [("5e-3", 5e-3), ("0", 2e-4)]:
        cfg, pipe = pipeline(family_folder("blip_2"), "blip2-lora", "train.lr=2e-4", f"train.qformer_lr={lr}")
        groups = {
            g["name"]: g["lr"] for g in param_groups(pipe.model, pipe.towers, cfg.train, cfg.adapters.specs())
        }
        assert groups["qformer.lora"] == pytest.approx(expected)
        assert groups["language.lora"] == pytest.approx(2e-4)


# ---------------------------------------------------------------- labels and the instruction
def test_decoder_only_labels_cover_the_answer_and_eos_only(family_folder, records):
    _, pipe = pipeline(family_folder("instructblip"), "instructblip-dora", attach_adapters=False)
    batch = pipe.collate(records[:1], train=True)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    supervised = [i for i, x in enumerate(labels) if x != IGNORE_INDEX]
    assert supervised == list(range(len(ids) - len(supervised), len(ids))), "the answer ends the sequence"
    assert pipe.tokenizer.decode([ids[i] for i in supervised]) == "red" + pipe.tokenizer.eos_token
    assert ids[: pipe.num_query_tokens] == [pipe.image_token_id] * pipe.num_query_tokens
    assert all(x == IGNORE_INDEX for x in labels[: supervised[0]])


def test_t5_prompt_goes_to_the_encoder_and_the_answer_to_decoder_labels(family_folder, records):
    _, pipe = pipeline(family_folder("blip_2_t5"), "blip2-dora", attach_adapters=False)
    batch = pipe.collate(records, train=True)
    tok = pipe.tokenizer
    encoder_text = tok.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert "What color is the circle?" in encoder_text and "red" not in encoder_text
    for row, answer in zip(batch["labels"], ["red", "A blue square and a yellow circle."]):
        kept = [x for x in row.tolist() if x != IGNORE_INDEX]
        assert tok.decode(kept) == answer + tok.eos_token
    # the loss is the decoder's cross-entropy on those labels (teacher forcing with T5's right shift)
    labels = batch["labels"]
    logits = pipe.model(**model_inputs(batch), labels=labels).logits
    keep = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert pipe.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)


def _query_outputs(pipe, batch) -> torch.Tensor:
    with torch.no_grad():
        out = pipe.model(**model_inputs(batch))
    return out.qformer_outputs.last_hidden_state[:, : pipe.num_query_tokens]


def test_the_instruction_reaches_the_instructblip_qformer(family_folder, records):
    vqa = records[0]
    other = {**vqa, "question": "How many shapes are there?"}
    _, pipe = pipeline(family_folder("instructblip"), "instructblip-dora", attach_adapters=False)
    batch = pipe.collate([vqa, other], train=True)
    qtext = pipe.processor.qformer_tokenizer.decode(batch["qformer_input_ids"][0], skip_special_tokens=True)
    assert "What color is the circle?" in qtext and "red" not in qtext  # the instruction, never the answer
    queries = _query_outputs(pipe, batch)
    assert (queries[0] - queries[1]).abs().max() > 1e-3
    # control: BLIP-2's Q-Former reads no text, so its queries depend on the image only
    _, blip2 = pipeline(family_folder("blip_2"), "blip2-dora", attach_adapters=False)
    same = _query_outputs(blip2, blip2.collate([vqa, other], train=True))
    assert torch.equal(same[0], same[1])


def test_instruction_templates_are_drawn_per_record_and_epoch(family_folder, records):
    _, pipe = pipeline(family_folder("blip_2"), "blip2-dora", attach_adapters=False)
    prompts = []
    for epoch in range(8):
        pipe.set_epoch(epoch)
        prompts.append(pipe.prompt_and_answer(records[0], train=True)[0])
    assert len(set(prompts)) >= 3 and all("What color is the circle?" in p for p in prompts)
    pipe.set_epoch(3)
    assert pipe.prompt_and_answer(records[0], train=True)[0] == prompts[3]  # seeded: the same draw again
    assert pipe.prompt_and_answer({**records[0], "prompt": "Q?"}, train=False) == ("Q?", None)


def test_multi_image_record_is_refused_with_one_line(family_folder, records):
    _, pipe = pipeline(family_folder("blip_2"), "blip2-dora", attach_adapters=False)
    with pytest.raises(
        DataError, match=r"record 'two' has 2 images; BLIP-2 and InstructBLIP take exactly one"
    ):
        pipe.collate([{**records[0], "id": "two", "images": [records[0]["image"]] * 2}])


def test_batched_left_padded_generation_equals_one_at_a_time(family_folder, records):
    for name in NAMES:
        _, pipe = pipeline(family_folder(name), RECIPE[name], attach_adapters=False)
        batch = pipe.collate(records, train=False)
        assert (batch["attention_mask"][:, -1] == 1).all()
        together = pipe.generate(batch, max_new_tokens=5)
        assert together == [
            pipe.generate(pipe.collate([r], train=False), max_new_tokens=5)[0] for r in records
        ]


# ---------------------------------------------------------------- acceptance 2: export
def _perturb(model) -> None:
    """Make every adapter non-trivial (as after training): random B and magnitudes off ||W0||."""
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for pn, p in layer.named_parameters():
                if "lora_B" in pn:
                    p.normal_(0, 0.05)
                elif "magnitude" in pn:
                    p.mul_(1 + 0.1 * torch.rand_like(p))


def teacher_forced(pipe, batch) -> dict:
    """Model inputs of a training batch; T5's decoder is fed the labels shifted right."""
    inputs = model_inputs(batch)
    if not pipe.decoder_only:
        inputs["decoder_input_ids"] = pipe.model.language_model._shift_right(batch["labels"])
    return inputs


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


@pytest.mark.parametrize("name", NAMES)
def test_merge_writes_the_source_class_with_its_processor_and_the_same_logits(
    name, family_folder, records, tmp_path
):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, pipe = pipeline(family_folder(name), RECIPE[name], "adapters.vision.method=lora")
    _perturb(pipe.model)
    pipe.model.eval()
    inputs = teacher_forced(pipe, pipe.collate(records, train=True))
    expected = _logits(pipe.model, inputs)
    out = pipe.save_merged(tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    source = json.loads((family_folder(name) / "config.json").read_text())
    assert (
        type(merged).__name__ == source["architectures"][0]
        and merged.config.model_type == source["model_type"]
    )
    assert type(AutoProcessor.from_pretrained(out)).__name__ == type(pipe.processor).__name__
    diff = (_logits(merged, inputs) - expected).abs().max() / expected.abs().max()
    assert diff < 1e-4, f"{name}: merged logits differ by {diff:.2e} (relative)"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_folder_loads_in_peft_with_the_same_logits(name, method, family_folder, records, tmp_path):
    import peft
    from transformers import AutoModelForImageTextToText

    from vlmtune.adapters.peft_io import save_adapter

    parts = [f"adapters.{t}.{k}={v}" for t in ("qformer", "language") for k, v in
             [("method", method), ("r", 4), ("alpha", 8), ("dropout", 0)]]  # fmt: skip
    cfg, pipe = pipeline(family_folder(name), RECIPE[name], *parts)
    _perturb(pipe.model)
    pipe.model.eval()
    inputs = teacher_forced(pipe, pipe.collate(records, train=True))
    expected = _logits(pipe.model, inputs)
    save_adapter(pipe.model, tmp_path / "adapter", cfg.adapters.specs(), str(family_folder(name)))
    base = AutoModelForImageTextToText.from_pretrained(family_folder(name))
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    diff = (_logits(loaded, inputs) - expected).abs().max() / expected.abs().max()
    assert diff < 1e-5, f"{name}/{method}: peft logits differ by {diff:.2e} (relative)"


# ---------------------------------------------------------------- PIN at the vision -> Q-Former seam
def test_pin_is_added_to_the_vision_output_before_the_qformer(family_folder, records):
    cfg, pipe = pipeline(family_folder("blip_2"), "blip2-pin", "adapters.qformer.options.hidden=[16]")
    assert pipe.towers["qformer"] == [SITE]
    trainable = [n for n, p in pipe.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(f"{SITE}.pin.") for n in trainable), trainable
    batch = pipe.collate(records, train=True)
    seen = {}
    pipe.model.qformer.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("enc", kw["encoder_hidden_states"]), with_kwargs=True
    )
    with torch.no_grad():
        vision = pipe.model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        before = pipe.loss(batch)
        assert torch.equal(seen["enc"], vision), "an untrained PIN leaves the model as it was"
        pin = pipe.model.get_submodule(f"{SITE}.pin")
        pin.out.bias.normal_()
        after = pipe.loss(batch)
    insert = pin(vision.shape[1])
    assert torch.allclose(seen["enc"], vision + insert, atol=1e-6)
    assert after.item() != before.item()
    pipe.loss(batch).backward()
    assert pin.out.weight.grad is not None and pin.out.weight.grad.abs().sum() > 0
    with pytest.raises(AdapterError, match="cannot be merged"):
        pipe.save_merged(Path(family_folder("blip_2")).parent / "pin-merged")


def test_the_trainer_sets_the_epoch_whose_templates_collate_draws(family_folder, records, tmp_path):
    from vlmtune.train.trainer import Trainer

    cfg, pipe = pipeline(family_folder("blip_2"), "blip2-lora", "train.batch_size=2", "train.epochs=3")
    trainer = Trainer(pipe, cfg, records, tmp_path / "run", quiet=True)
    batches = trainer._batches()
    seen = []
    for micro in range(3):  # one micro-batch per epoch (2 records, batch size 2)
        trainer.micro = micro
        next(batches)
        seen.append(pipe.epoch)
    assert seen == [0, 1, 2]
