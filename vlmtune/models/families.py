"""What differs between LLaVA-style VLM families: tower prefixes, default targets, extra inputs.

One :class:`Family` per transformers ``model_type`` (transformers 5 module layout, the checkpoint loaded
with ``AutoModelForImageTextToText``). A tower is a list of module-path prefixes; adapters resolve their
targets (leaf names such as ``q_proj``) only under their tower's prefixes, so a bare ``q_proj`` on the
language tower never lands in the vision tower.

    family = family_for("qwen2_5_vl")
    family.towers["projector"]          -> ["model.visual.merger"]
    family.targets["vision"]            -> ["qkv", "proj", "gate_proj", "up_proj", "down_proj"]
    family.extra_inputs                 -> ("image_grid_thw", "mm_token_type_ids")

The Q-Former families (BLIP-2, InstructBLIP) have a fourth part, ``qformer`` (the Q-Former, its query
tokens and ``language_projection``), instead of a projector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
                towers={
                    "language": ["language_model"],
                    "vision": ["vision_model"],
                    "qformer": ["qformer", "query_tokens", "language_projection"],
                },
                targets={
                    "language": [
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "o_proj",
                        "out_proj",
                        "fc1",
                        "fc2",
                        "q",
                        "k",
                        "v",
                        "o",
                        "wi_0",
                        "wi_1",
                        "wo",
                        "gate_proj",
                        "up_proj",
                        "down_proj",
                    ],
                    "vision": ["qkv", "projection", "fc1", "fc2"],
                    "qformer": ["query", "key", "value", "dense"],
                },
                extra_inputs=extra,
                hub_ids=hub,
            )
            for t, extra, hub in [
                ("blip-2", (), ("Salesforce/blip2-opt-2.7b", "Salesforce/blip2-flan-t5-xl")),
                (
                    "instructblip",
                    ("qformer_input_ids", "qformer_attention_mask"),
                    ("Salesforce/instructblip-vicuna-7b", "Salesforce/instructblip-flan-t5-xl"),
                ),
            ]
        ),
    ]
}


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
