"""train.epochs vs train.max_steps: what the user types wins over the recipe, and the plan is printed."""

from __future__ import annotations

from toy_models import llava_run

from vlmtune.core.config import load_config
from vlmtune.data.records import load_records
from vlmtune.train.run import read_metrics
from vlmtune.train.trainer import Trainer


def test_typed_epochs_clear_the_recipe_max_steps_and_typed_max_steps_still_win():
    assert load_config("llava-dora").train.max_steps == 400  # the recipe's own
    typed = load_config("llava-dora", ["train.epochs=3"]).train
    assert (typed.epochs, typed.max_steps) == (3, 0)
    both = load_config("llava-dora", ["train.epochs=3", "train.max_steps=7"]).train
    assert (both.epochs, both.max_steps) == (3, 7)


def test_three_epochs_on_six_records_run_exactly_three_epochs_and_print_the_plan(
    model_dir, shapes_cache, tmp_path, capsys
):
    records = load_records("shapes:vqa", split="train", n_images=2, cache_dir=shapes_cache)[:6]
    cfg, pipe = llava_run(
        f"model.name_or_path={model_dir}", "train.epochs=3", "train.batch_size=2", "train.log_every=1",
        "adapters.language.r=4", "adapters.language.alpha=8",
    )  # fmt: skip
    trainer = Trainer(pipe, cfg, records, tmp_path / "run")
    trainer.fit()
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert steps == list(range(1, 10))  # 3 batches of 2 per epoch x 3 epochs
    out = capsys.readouterr().out
    assert (
        "plan: 6 records -> 3 batches of <= 2 per epoch (grad_accum 1) -> 9 optimizer steps = 3.00 epochs"
        in out
    )
    assert "(train.epochs=3)" in out
