"""Settings that were ignored silently on the ViT and VL-BART pipelines (round-5 user report): refused at load
time in one line, or made to work (model.gradient_checkpointing)."""

from __future__ import annotations

import pytest
import torch

from vlmtune import cli
from vlmtune.presets.vlbart_shapes_tiny import build_random_vlbart


@pytest.mark.parametrize(
    "recipe, override, message",
    [
        ("vlbart-dora", "data.group_by_length=true",
         "'data.group_by_length' is not supported by model.pipeline=vlbart (VL-BART batches by task"),
        ("vit-head", "data.group_by_length=true", "'data.group_by_length' is not supported by model.pipeline=vit"),
        ("vlbart-dora", "data.task_batch_sizes.vqq=4",
         "'data.task_batch_sizes.vqq': no such task; the tasks are vqa, gqa, nlvr, caption"),
        ("llava-dora", "data.task_batch_sizes.vqa=4", "'data.task_batch_sizes' is used by model.pipeline=vlbart only"),
    ],
)  # fmt: skip
def test_settings_a_pipeline_would_ignore_are_refused_before_anything_runs(
    recipe, override, message, tmp_path, capsys
) -> None:
    """vit-head group_by_length was refused only after the preflight and the base evaluation (leaving a run
    folder); vlbart ignored it, and typos in data.task_batch_sizes, silently."""
    assert cli.main(["train", recipe, override, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def block_calls_and_grads(model: torch.nn.Module, blocks: list[torch.nn.Module], loss) -> tuple[int, dict]:
    """(calls of ``blocks`` in one forward + backward of ``loss()``, gradients by parameter name). ``blocks``:
    modules inside the checkpointed layers (transformers checkpoints a layer's ``forward``, its own hooks stay
    outside); pre-hooks, as a recomputation stops once it has what backward needs."""
    calls = []
    hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in blocks]
    model.zero_grad()
    loss().backward()
    for hook in hooks:
        hook.remove()
    return len(calls), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_checkpointing_recomputes_with_equal_grads(pipe, blocks: list, loss) -> None:
    """The Trainer's switch (model.gradient_checkpointing=true) recomputes each block in backward (twice
    the forward calls) and leaves every gradient as it was."""
    from vlmtune.train.trainer import enable_checkpointing

    pipe.model.train()
    torch.manual_seed(0)
    plain_calls, plain = block_calls_and_grads(pipe.model, blocks, loss)
    assert enable_checkpointing(pipe.model)
    torch.manual_seed(0)
    calls, grads = block_calls_and_grads(pipe.model, blocks, loss)
    assert calls == 2 * plain_calls > 0
    assert grads.keys() == plain.keys() and len(grads) > 0
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_checkpointing_works_on_the_vit_pipeline() -> None:
    """model.gradient_checkpointing=true on vit-*: enable_checkpointing returned False, the flag stayed off."""
    from vlmtune.adapters import AdapterSpec, attach
    from vlmtune.core.config import load_config
    from vlmtune.data.records import read_classification
    from vlmtune.models.vit import ViTPipeline, load_backbone

    torch.set_num_threads(1)
    vit, preset = load_backbone("digits-tiny-scratch")
    pipe = ViTPipeline(vit, preset, [str(i) for i in range(5)], "digits-tiny-scratch")
    specs = load_config("vit-lora").adapters.specs()
    attach(pipe.model, pipe.towers, {"vision": specs["vision"], "projector": AdapterSpec("full")})
    with torch.no_grad():
        pipe.model.head.weight.normal_()  # a zero head sends no gradient into the backbone
    batch = pipe.collate(read_classification("digits:target@test")[:8])
    assert_checkpointing_recomputes_with_equal_grads(
        pipe, [block.attn for block in pipe.model.vit.blocks], lambda: pipe.loss(batch)
    )
    assert pipe.model.vit.grad_checkpointing


def test_gradient_checkpointing_works_on_the_vlbart_pipeline(tmp_path) -> None:
    from PIL import Image

    from vlmtune.models.vlbart import VLBartPipeline, load_vlbart

    torch.set_num_threads(1)
    pipe = VLBartPipeline(*load_vlbart(build_random_vlbart(tmp_path / "tiny")))
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    records = [{"id": f"q{i}", "task": "vqa", "image": image, "question": "What color?", "answer": "red"}
               for i in range(2)]  # fmt: skip
    batch = pipe.collate(records)
    bart = pipe.model.bart.model
    layers = [layer.self_attn for layer in [*bart.encoder.layers, *bart.decoder.layers]]
    assert_checkpointing_recomputes_with_equal_grads(pipe, layers, lambda: pipe.loss(batch))
    assert bart.encoder.gradient_checkpointing and not pipe.model.config.use_cache
