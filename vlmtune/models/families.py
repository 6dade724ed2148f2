"""What differs between LLaVA-style VLM families: tower prefixes, default targets, extra inputs.

One :class:`Family` per transformers ``model_type`` (transformers 5 module layout, the checkpoint loaded
with ``AutoModelForImageTextToText``). A tower is a list of module-path prefixes; adapters resolve their
targets (leaf names such as ``q_proj``) only under their tower's prefixes, so a bare ``q_proj`` on the
language tower never lands in the vision tower.

    family = family_for("qwen2_5_vl")
    family.towers["projector"]          -> ["model.visual.merger"]
    family.targets["vision"]            -> ["qkv", "proj", "gate_proj", "up_proj", "down_proj"]
    family.extra_inputs                 -> ("image_grid_thw", "mm_token_type_ids")

The Q-Former families (BLIP-2, InstructBLIP) have a ``qformer`` tower (the Q-Former, its query tokens and
``language_projection``) instead of a projector; their language targets depend on the language model
(:func:`qformer_family`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlmtune.core.config import RunConfig

LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass(frozen=True)
class Family:
    """One VLM family.

    towers:        tower name -> module-path prefixes (``lm_head`` is in the language tower but no default)
    targets:       tower name -> default adapter targets (leaf module names) when a recipe gives none
    extra_inputs:  processor outputs besides ``input_ids``/``attention_mask``/``pixel_values`` that the
                   model's forward and ``generate`` need
    never_run:     module prefixes the VLM never runs (SigLIP's pooling ``head``): never adapted
    """

    model_type: str
    towers: dict[str, list[str]]
    targets: dict[str, list[str]]
    extra_inputs: tuple[str, ...] = ()
    never_run: tuple[str, ...] = ()
    notes: str = ""
    hub_ids: tuple[str, ...] = field(default=())


def _llava_like(model_type: str, vision: list[str], extra=(), never_run=(), hub_ids=(), **kw) -> Family:
    return Family(
        model_type,
        towers={
            "language": ["model.language_model", "lm_head"],
            "vision": ["model.vision_tower"],
            "projector": ["model.multi_modal_projector", *kw.pop("projector_extra", [])],
        },
        targets={
            "language": LM_TARGETS,
            "vision": vision,
            "projector": kw.pop("projector", ["linear_1", "linear_2"]),
        },
        extra_inputs=tuple(extra),
        never_run=tuple(never_run),
        hub_ids=tuple(hub_ids),
        **kw,
    )


def _qwen(model_type: str, vision: list[str], projector: list[str], merger: list[str], hub_ids) -> Family:
    return Family(
        model_type,
        towers={
            "language": ["model.language_model", "lm_head"],
            "vision": ["model.visual.patch_embed", "model.visual.blocks"],
            "projector": merger,
        },
        targets={"language": LM_TARGETS, "vision": vision, "projector": projector},
        extra_inputs=("image_grid_thw", "mm_token_type_ids"),
        hub_ids=tuple(hub_ids),
        notes="M-RoPE positions are built from image_grid_thw and mm_token_type_ids",
    )


SIGLIP_HEAD = ("model.vision_tower.vision_model.head",)

# BLIP-2 / InstructBLIP: the Q-Former is its own tower (with its query tokens and the projection into the LM)
QFORMER_TOWERS = {
    "language": ["language_model"],
    "vision": ["vision_model"],
    "qformer": ["qformer", "query_tokens", "language_projection"],
}
# default language targets per language model (``text_config.model_type``); T5's q/k/v/o are aliases of other
# names in recipes (core.adapter_spec), so they are matched by path
QFORMER_LM_TARGETS = {
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "llama": LM_TARGETS,
    "t5": [r"re:.*Attention\.(q|k|v|o)", r"re:.*DenseReluDense\.(wi|wi_0|wi_1|wo)"],
}

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        _llava_like("llava", CLIP_TARGETS, hub_ids=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf")),
        _llava_like(
            "llava_next",
            CLIP_TARGETS,
            extra=("image_sizes",),
            projector_extra=["model.image_newline"],
            hub_ids=("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"),
        ),
        _llava_like(
            "llava_onevision",
            CLIP_TARGETS,
            extra=("image_sizes", "batch_num_images"),
            projector_extra=["model.image_newline"],
            never_run=SIGLIP_HEAD,
            hub_ids=("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
        ),
        _qwen(
            "qwen2_vl",
            ["qkv", "proj", "fc1", "fc2"],
            ["0", "2"],
            ["model.visual.merger"],
            ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
        ),
        _qwen(
            "qwen2_5_vl",
            ["qkv", "proj", "gate_proj", "up_proj", "down_proj"],
            ["0", "2"],
            ["model.visual.merger"],
            ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
        ),
        _qwen(
            "qwen3_vl",
            ["qkv", "proj", "linear_fc1", "linear_fc2"],
            ["linear_fc1", "linear_fc2"],
            ["model.visual.merger", "model.visual.deepstack_merger_list"],
            ("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"),
        ),
        _llava_like(
            "paligemma",
            CLIP_TARGETS,
            extra=("token_type_ids",),
            projector=["linear"],
            never_run=SIGLIP_HEAD,
            hub_ids=("google/paligemma-3b-pt-224", "google/paligemma2-3b-pt-224"),
        ),
        _llava_like(
            "gemma3",
            CLIP_TARGETS,
            extra=("token_type_ids",),
            projector=[],  # a bare weight parameter, no nn.Linear: trained fully, not adapted
            never_run=SIGLIP_HEAD,
            hub_ids=("google/gemma-3-4b-it", "google/gemma-3-12b-it"),
        ),
        *(
            Family(
                t,
                towers={
                    "language": ["model.text_model", "lm_head"],
                    "vision": ["model.vision_model"],
                    "projector": ["model.connector"],
                },
                targets={"language": LM_TARGETS, "vision": CLIP_TARGETS, "projector": ["proj"]},
                extra_inputs=("pixel_attention_mask",),
                hub_ids=hub,
            )
            for t, hub in [
                ("idefics3", ("HuggingFaceM4/Idefics3-8B-Llama3",)),
                ("smolvlm", ("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceTB/SmolVLM2-2.2B-Instruct")),
            ]
        ),
        Family(
            "mllama",
            towers={
                "language": ["model.language_model", "lm_head"],
                "vision": ["model.vision_model"],
                "projector": ["model.multi_modal_projector"],
            },
            # the projector is itself one nn.Linear: its own name is the target
            targets={
                "language": LM_TARGETS,
                "vision": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
                "projector": ["multi_modal_projector"],
            },
            extra_inputs=("aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"),
            hub_ids=("meta-llama/Llama-3.2-11B-Vision-Instruct",),
            notes="vision enters the LM through cross-attention layers; the projector maps the vision "
            "features to the cross-attention states",
        ),
        _llava_like(
            "internvl",
            ["q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"],
            hub_ids=("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-8B-hf"),
        ),
        *(
            Family(
                t,
                towers=QFORMER_TOWERS,
                targets={
                    "language": sorted({n for names in QFORMER_LM_TARGETS.values() for n in names}),
                    "vision": ["qkv", "projection", "fc1", "fc2"],
                    "qformer": ["query", "key", "value", "dense", "language_projection"],
                },
                extra_inputs=extra,
                hub_ids=hub,
                notes=note,
            )
            for t, extra, hub, note in [
                ("blip-2", (), ("Salesforce/blip2-opt-2.7b", "Salesforce/blip2-flan-t5-xl"), ""),
                (
                    "instructblip",
                    ("qformer_input_ids", "qformer_attention_mask"),
                    ("Salesforce/instructblip-vicuna-7b", "Salesforce/instructblip-flan-t5-xl"),
                    "the instruction also enters the Q-Former (qformer_input_ids)",
                ),
            ]
        ),
    ]
}


# Q-Former models: trained by vlmtune.models.qformer (model.pipeline: blip2, or llava dispatching by model_type)
QFORMER_TYPES = ("blip-2", "instructblip")
LLAVA_STYLE = sorted(t for t in FAMILIES if t not in QFORMER_TYPES)


class UnsupportedFamily(ValueError):
    """A checkpoint whose ``model_type`` has no :class:`Family`."""


def family_for(model_type: str) -> Family:
    """The :class:`Family` of a transformers ``model_type``; one-line error naming the supported list."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedFamily(
            f"model_type '{model_type}' is not a supported VLM family; supported: {', '.join(sorted(FAMILIES))}"
        ) from None


def qformer_family(model_type: str, text_model_type: str) -> Family:
    """The Q-Former family of ``model_type`` with the default language targets of its language model
    (OPT, Llama/Vicuna, T5); one line when the language model has none."""
    if text_model_type not in QFORMER_LM_TARGETS:
        raise UnsupportedFamily(
            f"'{model_type}' with a '{text_model_type}' language model has no default language targets "
            f"(known: {', '.join(QFORMER_LM_TARGETS)}); name them: adapters.language.targets=[...]"
        )
    family = FAMILIES[model_type]
    return replace(family, targets={**family.targets, "language": QFORMER_LM_TARGETS[text_model_type]})


def tower_map(family: Family, overrides: dict[str, list[str]]) -> dict[str, list[str]]:
    """The family's towers with ``model.towers`` overrides applied (unknown tower names rejected)."""
    from vlmtune.core.config import ConfigError

    towers = {k: list(v) for k, v in family.towers.items()}
    for tower, prefixes in overrides.items():
        if tower not in towers:
            raise ConfigError(
                f"config key 'model.towers.{tower}': '{family.model_type}' has towers {sorted(towers)}"
            )
        towers[tower] = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    return towers


def resolve_default_targets(cfg: RunConfig, family: Family) -> None:
    """``targets: [default]`` on a tower -> that family's default targets for the tower (in place, so the
    run folder's config.yaml records the modules that were meant)."""
    for tower, spec in cfg.adapters.specs().items():
        if "default" in spec.targets:
            rest = [t for t in spec.targets if t != "default"]
            spec.targets = list(dict.fromkeys([*family.targets.get(tower, []), *rest]))


def unused_modules(model, towers: dict[str, list[str]], family: Family) -> list[str]:
    """Module paths inside the towers that the VLM runs but never uses (adapters there get no gradient):

    - the family's ``never_run`` modules (SigLIP's pooling ``head``) that exist in this model;
    - InstructBLIP's last Q-Former text feed-forward (:func:`qformer_text_ffn`);
    - vision encoder layers after ``config.vision_feature_layer`` (LLaVA-1.5 reads the penultimate
      layer, ``-2``: the last layer's output is discarded).
    """
    names = dict(model.named_modules())
    unused = [p for p in family.never_run if p in names]
    unused += [p for p in qformer_text_ffn(model) if p in names]
    feature_layer = getattr(model.config, "vision_feature_layer", None)
    if feature_layer is None:
        return unused
    used = feature_layer if isinstance(feature_layer, (list, tuple)) else [feature_layer]
    import torch.nn as nn

    for prefix in towers.get("vision", []):
        lists = [(n, m) for n, m in names.items() if n.startswith(prefix + ".") and n.endswith(".layers")
                 and isinstance(m, nn.ModuleList)]  # fmt: skip
        for path, layers in lists[:1]:  # hidden_states[j] is the output of layer j-1 (0: the embeddings)
            last_used = max((j if j >= 0 else len(layers) + 1 + j) for j in used)
            unused += [f"{path}.{i}" for i in range(last_used, len(layers))]
    return unused


def qformer_text_ffn(model) -> list[str]:
    """InstructBLIP: the last Q-Former layer's text feed-forward (``intermediate``/``output``) runs on the
    instruction tokens, whose last-layer states are discarded (only the query outputs reach the LM), so
    adapters there would get no gradient. BLIP-2's Q-Former has no text feed-forward; other models no
    Q-Former (empty list)."""
    layers = getattr(getattr(getattr(model, "qformer", None), "encoder", None), "layer", None)
    if layers is None:
        return []
    last = f"qformer.encoder.layer.{len(layers) - 1}"
    return [f"{last}.intermediate", f"{last}.output"]


def exclude(model, prefixes: list[str], excluded: list[str]) -> list[str]:
    """``prefixes`` with every path in ``excluded`` carved out: a prefix that contains an excluded path is
    replaced by its children (recursively), so targets resolve only in modules that are used."""
    out: list[str] = []
    for prefix in prefixes:
        inside = [e for e in excluded if e == prefix or e.startswith(prefix + ".")]
        if not inside:
            out.append(prefix)
        elif prefix not in inside:
            children = [f"{prefix}.{c}" for c, _ in model.get_submodule(prefix).named_children()]
            out += exclude(model, children, inside)
    return out


def model_towers(model, family: Family, overrides: dict[str, list[str]]) -> dict[str, list[str]]:
    """The towers of a loaded (or meta) ``model``: the family's prefixes without the modules the VLM never
    uses (:func:`unused_modules`); ``model.towers`` overrides are taken as given."""
    towers = tower_map(family, overrides)
    if overrides:
        return towers
    unused = unused_modules(model, towers, family)
    return {t: exclude(model, prefixes, unused) for t, prefixes in towers.items()}
