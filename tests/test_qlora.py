"""QLoRA: 4-bit NF4 language model + LoRA in the compute dtype (bf16) + optional paged AdamW.
The training test runs only where CUDA and bitsandbytes exist; the refusals are checked everywhere."""

from __future__ import annotations

import math

import pytest
import torch
from test_distributed import overrides

from vlmtune.core.config import ConfigError, load_config
from vlmtune.models.qlora import check_4bit, unavailable_reason
from vlmtune.train import command

needs_gpu = pytest.mark.skipif(unavailable_reason() is not None, reason=f"QLoRA: {unavailable_reason()}")


def test_paged_optimizer_refuses_without_cuda_and_bitsandbytes() -> None:
    if unavailable_reason() is None:
        pytest.skip("CUDA and bitsandbytes present: the refusal does not apply")
    cfg = load_config("llava-lora", ["train.optimizer=paged_adamw_8bit"])
    with pytest.raises(ConfigError) as e:
        check_4bit(cfg)
    assert str(e.value).startswith("train.optimizer=paged_adamw_8bit needs a CUDA GPU and bitsandbytes; ")
    assert "\n" not in str(e.value)


def test_dora_on_4bit_is_refused_in_the_plan() -> None:
    from vlmtune.plan import qlora_refusal

    assert qlora_refusal(load_config("llava-dora")) == "DoRA on 4-bit weights is refused (LoRA only)"
    assert qlora_refusal(load_config("llava-lora")) is None


@needs_gpu
@pytest.mark.parametrize("optimizer", ["adamw", "paged_adamw_8bit"])
def test_qlora_lora_in_bf16_trains(model_dir, tmp_path, optimizer) -> None:
    from vlmtune.adapters import attach
    from vlmtune.models import build_pipeline
    from vlmtune.models.qlora import is_quantized

    args = [
        *overrides(model_dir),
        "model.load_in_4bit=true",
        "train.max_steps=3",
        f"train.optimizer={optimizer}",
    ]
    cfg = load_config("llava-lora", args)
    pipe = build_pipeline(cfg)
    assert is_quantized(pipe.model)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    lora = [p for n, p in pipe.model.named_parameters() if "lora_" in n]
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert lora and {p.dtype for p in lora} == {compute}  # the 4-bit layers' compute dtype
    summary = command.run(cfg, tmp_path, quiet=True)
    assert summary["train"]["step"] == 3 and math.isfinite(summary["train"]["loss"])
