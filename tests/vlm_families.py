"""Tiny random-weight checkpoints of today's VLM families, built offline for tests.

Each builder writes a folder the way a hub checkpoint looks: ``config.json`` + ``model.safetensors``
(``save_pretrained``), the family's own image processor and processor, a tokenizer with the special
tokens that processor needs, and a chat template in the family's style. Tests then load the folder
through ``AutoModelForImageTextToText`` / ``AutoProcessor`` exactly as a downloaded checkpoint is loaded.

    build_family("qwen2_vl", tmp_path / "qwen2_vl")  -> Path

Sizes are minimal (hidden 32, 1-2 layers, 32-64 px images) so that a forward + backward takes
milliseconds; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB = 384
TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
    vocab_size=VOCAB,
    # a real LM head separates tokens; at the default 0.02 a frozen tiny head caps every logit near 0.6 and
    # no adapter could fit a batch
    initializer_range=0.25,
)
CORPUS = [
    "What color is the circle? red. The circle is red.",
    "How many shapes are there? 2. I can see 2 shapes.",
    "Is there a green triangle? no. There is no green triangle.",
    "Describe the image. A blue square and a yellow circle on a white background.",
    "Answer the question using a single word or phrase. yes no 0 1 2 3 4 5 6 7 8 9",
    "user assistant system USER: ASSISTANT: model\n\n",
]

# Chat templates in each family's style (message content: str or list of {"type": "text"|"image"}).
_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{IMAGE}{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)


def _content(image: str) -> str:
    return _CONTENT.replace("{IMAGE}", image)


CHATML = (
    "{%- for message in messages -%}<|im_start|>{{ message['role'] + '\\n' }}"
    + _content("{IMAGE_CHATML}")
    + "<|im_end|>{{ '\\n' }}{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)
VICUNA = (
    "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{{ 'USER: ' }}"
    + _content("<image>{{ '\\n' }}")
    + "{{ ' ' }}{%- else -%}{{ 'ASSISTANT: ' }}"
    + _content("")
    + "</s>{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)
# llava-1.5-hf / llava-v1.6-vicuna-hf style (transformers' LLaVA-NeXT conversion script, ``chat_vicuna``): images
# first, each text part followed by a space, and no end-of-turn marker after an assistant answer.
VICUNA_HF = (
    "{%- for message in messages -%}{%- if message['role'] == 'system' -%}{{ message['content'][0]['text'] }}"
    "{%- else -%}{{ message['role'].upper() + ': ' }}{%- endif -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'image') -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') -%}{{ part['text'] + ' ' }}{%- endfor -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
GEMMA = (
    "{{ bos_token }}{%- for message in messages -%}<start_of_turn>"
    "{{ ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    + _content("<start_of_image>")
    + "<end_of_turn>{{ '\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model{{ '\\n' }}{%- endif -%}"
)
IDEFICS = (
    "<|im_start|>{%- for message in messages -%}{{ message['role'] | capitalize }}:"
    + _content("<image>")
    + "<end_of_utterance>{{ '\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)
LLAMA3 = (
    "<|begin_of_text|>{%- for message in messages -%}<|start_header_id|>{{ message['role'] }}<|end_header_id|>{{ '\\n\\n' }}"
    + _content("<|image|>")
    + "<|eot_id|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>{{ '\\n\\n' }}{%- endif -%}"
)


def _chatml(image: str) -> str:
    return CHATML.replace("{IMAGE_CHATML}", image)


def train_tokenizer(special: list[str], bos: str, eos: str, pad: str, extra: dict[str, str]):
    """Byte-level BPE over :data:`CORPUS` with the family's special tokens -> ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(["<unk>", bos, eos, pad, *special]))
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=extra,
        model_max_length=2048,
    )


@dataclass
class Family:
    """How to build one family's tiny checkpoint."""

    model_type: str
    specials: list[str]
    extra: dict[str, str]
    chat_template: str | None  # None: the family has none (PaliGemma: prefix + suffix)
    build: Callable  # (tokenizer) -> (model, processor)
    bos: str = "<s>"
    eos: str = "</s>"
    pad: str = "<pad>"
    stop: tuple[
        str, ...
    ] = ()  # end-of-turn tokens besides eos (the checkpoint's generation_config lists them)


def _ids(tok, **names: str) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def _clip(image_size=32, patch=8):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=32,
    )


def _siglip(image_size=32, patch=8, **kw):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        **kw,
    )


def _llama(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        **{**TEXT, **kw},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _qwen2(tok, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(
        **{**TEXT, **kw},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _clip_processor(size=32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_llava(tok):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    cfg = LlavaConfig(
        vision_config=_clip(),
        text_config=_llama(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    proc = LlavaProcessor(
        image_processor=_clip_processor(),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration(cfg), proc


def build_llava_next(tok):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    grid = [[32, 64], [64, 32], [64, 64]]
    cfg = LlavaNextConfig(
        vision_config=_clip(),
        text_config=_llama(tok),
        image_grid_pinpoints=grid,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    ip = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grid
    )
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaNextForConditionalGeneration(cfg), proc


def build_qwen2_vl(tok, flavour="qwen2_vl"):
    import transformers as T

    vision = dict(
        depth=2,
        embed_dim=32,
        hidden_size=32,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    ids = _ids(
        tok,
        image_token_id="<|image_pad|>",
        video_token_id="<|video_pad|>",
        vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>",
    )
    tok_ids = dict(
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    text = {
        **TEXT,
        **tok_ids,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    }
    if flavour == "qwen2_vl":
        cfg = T.Qwen2VLConfig(vision_config=dict(vision, mlp_ratio=2), text_config=text, **ids)
        model = T.Qwen2VLForConditionalGeneration(cfg)
        proc_cls = T.Qwen2VLProcessor
    elif flavour == "qwen2_5_vl":
        cfg = T.Qwen2_5_VLConfig(
            vision_config=dict(
                vision, intermediate_size=64, out_hidden_size=32, window_size=16, fullatt_block_indexes=[1]
            ),
            text_config=text,
            **ids,
        )
        model = T.Qwen2_5_VLForConditionalGeneration(cfg)
        proc_cls = T.Qwen2_5_VLProcessor
    else:
        vis3 = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=32,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
        text3 = {
            **TEXT,
            **tok_ids,
            "head_dim": 16,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 10000.0,
                "mrope_interleaved": True,
            },
        }
        cfg = T.Qwen3VLConfig(vision_config=vis3, text_config=text3, **ids)
        model = T.Qwen3VLForConditionalGeneration(cfg)
        proc_cls = T.Qwen3VLProcessor
    ip = T.Qwen2VLImageProcessor(
        min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2, temporal_patch_size=2
    )
    vp_cls = T.Qwen3VLVideoProcessor if flavour == "qwen3_vl" else T.Qwen2VLVideoProcessor
    vp = vp_cls(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=32 * 32 * 4)
    proc = proc_cls(image_processor=ip, tokenizer=tok, video_processor=vp)
    return model, proc


def build_paligemma(tok):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    ip = SiglipImageProcessor(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds <loc>/<seg> tokens
    text = GemmaConfig(
        **{**TEXT, "vocab_size": len(tok), "head_dim": 16},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = PaliGemmaConfig(
        vision_config=_siglip(vision_use_head=False, projection_dim=32),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projection_dim=32,
        hidden_size=32,
    )
    return PaliGemmaForConditionalGeneration(cfg), proc


def build_gemma3(tok):
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
    )

    ip = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4)
    text = Gemma3TextConfig(
        **{**TEXT, "vocab_size": len(tok), "head_dim": 16, "sliding_window": 64},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    ids = _ids(
        tok,
        boi_token_index="<start_of_image>",
        eoi_token_index="<end_of_image>",
        image_token_index="<image_soft_token>",
    )
    cfg = Gemma3Config(
        text_config=text, vision_config=_siglip(vision_use_head=False), mm_tokens_per_image=4, **ids
    )
    model = Gemma3ForConditionalGeneration(cfg)
    with (
        torch.no_grad()
    ):  # random init starts the projection at zero: no gradient would reach the vision tower
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.02)
    return model, proc


def build_idefics3(tok, flavour="idefics3"):
    import transformers as T

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = _llama(tok, vocab_size=len(tok))
    if flavour == "idefics3":
        cfg = T.Idefics3Config(
            vision_config=vision,
            text_config=text,
            scale_factor=2,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
        )
        ip = T.Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
        proc = T.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)
        return T.Idefics3ForConditionalGeneration(cfg), proc
    cfg = T.SmolVLMConfig(
        vision_config=vision,
        text_config=text,
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    ip = T.SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    vp = T.SmolVLMVideoProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    proc = T.SmolVLMProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_len=4)
    return T.SmolVLMForConditionalGeneration(cfg), proc


def build_mllama(tok):
    import transformers as T

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        max_num_tiles=2,
        intermediate_layers_indices=[0],
        vision_output_dim=64,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    text = dict(
        TEXT,
        vocab_size=len(tok),
        num_hidden_layers=2,
        cross_attention_layers=[1],
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    text.pop("max_position_embeddings")
    cfg = T.MllamaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|image|>")
    )
    ip = T.MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=2)
    proc = T.MllamaProcessor(image_processor=ip, tokenizer=tok)
    model = T.MllamaForConditionalGeneration(cfg)
    with torch.no_grad():  # cross-attention gates start at zero: open them so vision reaches the loss
        for name, p in model.named_parameters():
            if "gate" in name and p.dim() <= 1:
                p.fill_(0.5)
    return model, proc


def build_internvl(tok):
    import transformers as T

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[32, 32],
        patch_size=[8, 8],
    )
    cfg = T.InternVLConfig(
        vision_config=vision,
        text_config=_qwen2(tok, vocab_size=len(tok)),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
    )
    ip = T.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=False, max_patches=2)
    vp = T.InternVLVideoProcessor(size={"height": 32, "width": 32})
    proc = T.InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_length=4)
    return T.InternVLForConditionalGeneration(cfg), proc


def build_llava_onevision(tok):
    import transformers as T

    grid = [[32, 32], [32, 64], [64, 32], [64, 64]]
    cfg = T.LlavaOnevisionConfig(
        vision_config=_siglip(vision_use_head=False),
        text_config=_qwen2(tok),
        image_grid_pinpoints=grid,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    ip = T.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=grid)
    vp = T.LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    proc = T.LlavaOnevisionProcessor(
        image_processor=ip,
        tokenizer=tok,
        video_processor=vp,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
    )
    return T.LlavaOnevisionForConditionalGeneration(cfg), proc


def _blip_vision():
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )


def _qformer():
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        encoder_hidden_size=32,
        vocab_size=VOCAB,
        cross_attention_frequency=1,
    )


def _with_query_tokens(model):
    """Query tokens drawn as LAVIS initialises them (normal, std = the Q-Former's initializer_range):
    transformers starts them at zero, and identical queries give the first Q-Former self-attention's
    query/key projections no gradient (a released checkpoint's trained tokens differ)."""
    with torch.no_grad():
        model.query_tokens.normal_(0.0, model.config.qformer_config.initializer_range)
    return model


def build_blip2(tok, lm="opt"):
    import transformers as T

    ip = T.BlipImageProcessor(size={"height": 32, "width": 32})
    proc = T.Blip2Processor(image_processor=ip, tokenizer=tok, num_query_tokens=4)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if lm == "opt":
        text = T.OPTConfig(
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            word_embed_proj_dim=32,
            max_position_embeddings=512,
            vocab_size=len(tok),
            init_std=TEXT["initializer_range"],  # see TEXT: a frozen head at 0.02 cannot fit a batch
            **ids,
        )
    else:  # Flan-T5: encoder-decoder
        text = T.T5Config(
            d_model=32,
            d_ff=64,
            d_kv=16,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            vocab_size=len(tok),
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=tok.pad_token_id,
            **ids,
        )
    cfg = T.Blip2Config(
        vision_config=_blip_vision(),
        qformer_config=_qformer(),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    return _with_query_tokens(T.Blip2ForConditionalGeneration(cfg)), proc


def build_instructblip(tok):
    import transformers as T

    ip = T.BlipImageProcessor(size={"height": 32, "width": 32})
    qtok = train_tokenizer([], "[CLS]", "[SEP]", "[PAD]", {})
    proc = T.InstructBlipProcessor(
        image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=4
    )
    qformer = dict(_qformer(), vocab_size=len(qtok), pad_token_id=qtok.pad_token_id)
    cfg = T.InstructBlipConfig(
        vision_config=_blip_vision(),
        qformer_config=qformer,
        text_config=_llama(tok, vocab_size=len(tok)).to_dict(),
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    return _with_query_tokens(T.InstructBlipForConditionalGeneration(cfg)), proc


FAMILIES: dict[str, Family] = {
    "llava": Family("llava", ["<image>"], {"image_token": "<image>"}, VICUNA, build_llava),
    "llava_next": Family("llava_next", ["<image>"], {"image_token": "<image>"}, VICUNA, build_llava_next),
    "llava_hf": Family("llava", ["<image>"], {"image_token": "<image>"}, VICUNA_HF, build_llava),
    "llava_next_hf": Family(
        "llava_next", ["<image>"], {"image_token": "<image>"}, VICUNA_HF, build_llava_next
    ),
    "qwen2_vl": Family(
        "qwen2_vl",
        [
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ],
        {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        _chatml("<|vision_start|><|image_pad|><|vision_end|>"),
        build_qwen2_vl,
        bos="<|endoftext|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
    ),
}
FAMILIES.update(
    {
        "paligemma": Family(
            "paligemma",
            ["<image>"],
            {"image_token": "<image>"},
            None,
            build_paligemma,
            bos="<bos>",
            eos="<eos>",
        ),
        "gemma3": Family(
            "gemma3",
            ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
            {
                "image_token": "<image_soft_token>",
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
            },
            GEMMA,
            build_gemma3,
            bos="<bos>",
            eos="<eos>",
            stop=("<end_of_turn>",),
        ),
        "idefics3": Family(
            "idefics3",
            ["<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"],
            {},
            IDEFICS,
            build_idefics3,
            eos="<end_of_utterance>",
        ),
        "mllama": Family(
            "mllama",
            ["<|image|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>"],
            {"image_token": "<|image|>"},
            LLAMA3,
            build_mllama,
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            pad="<|finetune_right_pad_id|>",
        ),
        "internvl": Family(
            "internvl",
            ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
            {
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            },
            _chatml("<IMG_CONTEXT>{{ '\\n' }}"),
            build_internvl,
            bos="<|endoftext|>",
            eos="<|im_end|>",
            pad="<|endoftext|>",
        ),
        "llava_onevision": Family(
            "llava_onevision",
            ["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
            {"image_token": "<image>", "video_token": "<video>"},
            _chatml("<image>{{ '\\n' }}"),
            build_llava_onevision,
            bos="<|endoftext|>",
            eos="<|im_end|>",
            pad="<|endoftext|>",
        ),
    }
)
FAMILIES.update(
    {
        # the BLIP processors add <image> themselves (and fail on a tokenizer that already names it)
        "blip_2": Family("blip-2", [], {}, None, build_blip2),
        "blip_2_t5": Family(
            "blip-2", [], {}, None, lambda tok: build_blip2(tok, "t5"), bos="<pad>", eos="</s>", pad="<pad>"
        ),
        "instructblip": Family("instructblip", [], {}, None, build_instructblip),
    }
)
FAMILIES["smolvlm"] = Family(
    **{
        **FAMILIES["idefics3"].__dict__,
        "model_type": "smolvlm",
        "build": lambda tok: build_idefics3(tok, "smolvlm"),
    }
)
FAMILIES["qwen2_5_vl"] = Family(
    **{
        **FAMILIES["qwen2_vl"].__dict__,
        "model_type": "qwen2_5_vl",
        "build": lambda tok: build_qwen2_vl(tok, "qwen2_5_vl"),
    }
)
FAMILIES["qwen3_vl"] = Family(
    **{
        **FAMILIES["qwen2_vl"].__dict__,
        "model_type": "qwen3_vl",
        "build": lambda tok: build_qwen2_vl(tok, "qwen3_vl"),
    }
)


def build_family(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write family ``name``'s tiny random checkpoint (model + processor + chat template) to ``out_dir``."""
    fam = FAMILIES[name]
    tok = train_tokenizer(fam.specials, fam.bos, fam.eos, fam.pad, fam.extra)
    torch.manual_seed(seed)
    model, proc = fam.build(tok)
    if fam.chat_template:
        proc.chat_template = fam.chat_template
    if fam.stop:
        model.generation_config.eos_token_id = [tok.eos_token_id, *tok.convert_tokens_to_ids(list(fam.stop))]
    out = Path(out_dir)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
