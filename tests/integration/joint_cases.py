"""The tiny pipelines of the joint-attention families, with what the tests need to know about each.

Like ``cases.py``, this is the tests' own, independent description of each family: how the denoiser takes
text, where its processors call attention, the token order there, and how its CFG branches run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nag_guidance.testing import joint as fj


@dataclass(frozen=True)
class JointCase:
    id: str
    make: Callable[[], Any]
    call_kwargs: Callable[..., dict]
    family: str
    encode: Callable[[Any, str], tuple[torch.Tensor, torch.Tensor | None]]  # text as the denoiser takes it
    attention_module: str  # module holding the attention function the processors call
    attention_name: str = "dispatch_attention_fn"
    text_first: bool = True
    text_arg: str = "encoder_hidden_states"
    mask_arg: str | None = None
    ids_arg: str | None = None
    pooled: tuple[str, Callable[[Any, str], torch.Tensor]] | None = None  # (denoiser argument, encoder)
    cfg: str = "separate"  # "batched": one [uncond, cond] forward; "separate": cond, then uncond forward
    cfg_kwargs: dict | None = field(default_factory=lambda: {"guidance_scale": 3.0})  # None: the pipeline has no CFG
    denoisers: tuple[str, ...] = ("transformer",)
    per_prompt: str = "num_images_per_prompt"
    negative_lengths: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None  # (shorter, longer) embeds
    mask_spans_image: bool = False
    batch_test: bool = True  # whether the 2 prompts × 2 images test applies
    ids_kind: str = "zeros"
    attention_modules: tuple[str, ...] = ("attn",)
    refused_negative_lengths: tuple[str, ...] = ()  # "shorter"/"longer" negatives the family refuses (ValueError)
    honours_per_prompt: bool = True  # whether the pipeline makes ``per_prompt`` outputs per prompt when asked
    trimmed_caption: bool = False  # each row's joint sequence is [its real caption | image | padding] (Lumina 2)
    extra_text: tuple[str, Callable[[Any, str], torch.Tensor], int] | None = None  # (argument, encoder, batch axis)
    image_tokens_of: Callable[[dict], int] | None = None  # denoiser arguments -> image tokens (first in the sequence)

    def kwargs(self, **overrides) -> dict:
        return self.call_kwargs(**overrides)

    @property
    def owner(self) -> Any:
        return importlib.import_module(self.attention_module)

    @property
    def bshd(self) -> bool:
        return self.attention_name == "dispatch_attention_fn"


def _flux_text(pipe, text):
    return pipe.encode_prompt(text, prompt_2=None, max_sequence_length=16)[0], None


def _flux_pooled(pipe, text):
    return pipe.encode_prompt(text, prompt_2=None, max_sequence_length=16)[1]


def _flux_lengths(pipe):
    short = pipe.encode_prompt("dog", prompt_2=None, max_sequence_length=8)[0]
    long = pipe.encode_prompt("blurry low quality dog", prompt_2=None, max_sequence_length=24)[0]
    return short, long


def _sd3_text(pipe, text):
    return pipe.encode_prompt(text, None, None, do_classifier_free_guidance=False, max_sequence_length=16)[0], None


def _sd3_pooled(pipe, text):
    return pipe.encode_prompt(text, None, None, do_classifier_free_guidance=False, max_sequence_length=16)[2]


def _sd3_lengths(pipe):
    short = pipe.encode_prompt("dog", None, None, do_classifier_free_guidance=False, max_sequence_length=8)[0]
    long = pipe.encode_prompt("blurry dog", None, None, do_classifier_free_guidance=False, max_sequence_length=24)[0]
    return short, long


def _chroma_text(pipe, text):
    embeds, _ids, mask, *_ = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=16)
    return embeds, mask


def _chroma_lengths(pipe):
    short = pipe.encode_prompt("dog", do_classifier_free_guidance=False, max_sequence_length=8)
    long = pipe.encode_prompt("blurry low dog", do_classifier_free_guidance=False, max_sequence_length=24)
    return short[0], long[0]


def _qwen_text(pipe, text):
    return pipe.encode_prompt(text, max_sequence_length=64)


def _qwen_edit_text(pipe, text):
    """As the Edit pipeline encodes text: together with the reference image resized to ~1024² pixels."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    width, height, _ = calculate_dimensions(1024 * 1024, 1.0)
    image = pipe.image_processor.resize(fj.qwenimage_edit_call_kwargs()["image"], height, width)
    return pipe.encode_prompt(text, image=image, max_sequence_length=64)


def _qwen_edit_lengths(pipe):
    return _qwen_edit_text(pipe, "dog")[0], _qwen_edit_text(pipe, "a very blurry low quality dark dog")[0]


def _qwen_lengths(pipe):
    short = pipe.encode_prompt("dog", max_sequence_length=64)[0]
    long = pipe.encode_prompt("a very blurry low quality dark dog with glasses", max_sequence_length=64)[0]
    return short, long


def _hunyuan_text(pipe, text):
    embeds, _pooled, mask = pipe.encode_prompt(text, prompt_2=None, max_sequence_length=16)
    return embeds, mask


def _hunyuan_pooled(pipe, text):
    return pipe.encode_prompt(text, prompt_2=None, max_sequence_length=16)[1]


def _hunyuan_lengths(pipe):
    short = pipe.encode_prompt("dog", prompt_2=None, max_sequence_length=8)
    long = pipe.encode_prompt("blurry low quality dark dog", prompt_2=None, max_sequence_length=24)
    return short[0], long[0]


def _flux2_text(pipe, text):
    return pipe.encode_prompt(text, max_sequence_length=pipe._nag_test_length)[0], None


def _flux2_lengths(pipe):
    length = pipe._nag_test_length
    return (
        pipe.encode_prompt("dog", max_sequence_length=length - 8)[0],
        pipe.encode_prompt("blurry dark dog", max_sequence_length=length + 8)[0],
    )


def _with_length(make, length):
    def build():
        pipe = make()
        pipe._nag_test_length = length  # the max_sequence_length of the call kwargs
        return pipe

    return build


def _zimage_text(pipe, text):
    rows = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=64)[0]
    return rows, None


def _zimage_lengths(pipe):
    """Embeds of a shorter and a longer negative (the prompt's caption pads to 32 tokens; so do these)."""
    short = pipe.encode_prompt("dog", do_classifier_free_guidance=False, max_sequence_length=64)[0][0]
    long = pipe.encode_prompt("a blurry dark dog", do_classifier_free_guidance=False, max_sequence_length=64)[0][0]
    return short[None], long[None]


FLUX_ATTENTION = "diffusers.models.transformers.transformer_flux"
FLUX2_ATTENTION = "diffusers.models.transformers.transformer_flux2"
HUNYUAN_ATTENTION = "diffusers.models.transformers.transformer_hunyuan_video"
QWEN_ATTENTION = "diffusers.models.transformers.transformer_qwenimage"
SDPA = ("torch.nn.functional", "scaled_dot_product_attention")

JOINT_CASES: list[JointCase] = [
    JointCase(
        "flux",
        fj.make_flux,
        fj.flux_call_kwargs,
        "flux",
        _flux_text,
        FLUX_ATTENTION,
        ids_arg="txt_ids",
        pooled=("pooled_projections", _flux_pooled),
        cfg_kwargs={"true_cfg_scale": 3.0, "negative_prompt": "ugly"},
        negative_lengths=_flux_lengths,
    ),
    JointCase(
        "flux-kontext",
        fj.make_flux_kontext,
        fj.flux_kontext_call_kwargs,
        "flux-kontext",
        _flux_text,
        FLUX_ATTENTION,
        ids_arg="txt_ids",
        pooled=("pooled_projections", _flux_pooled),
        cfg_kwargs={"true_cfg_scale": 3.0, "negative_prompt": "ugly"},
        negative_lengths=_flux_lengths,
    ),
    JointCase(
        "sd3",
        fj.make_sd3,
        fj.sd3_call_kwargs,
        "sd3",
        _sd3_text,
        *SDPA,
        text_first=False,
        pooled=("pooled_projections", _sd3_pooled),
        cfg="batched",
        negative_lengths=_sd3_lengths,
    ),
    JointCase(
        "sd35",
        fj.make_sd35,
        fj.sd3_call_kwargs,
        "sd3",
        _sd3_text,
        *SDPA,
        text_first=False,
        pooled=("pooled_projections", _sd3_pooled),
        cfg="batched",
        negative_lengths=_sd3_lengths,
    ),
]

JOINT_CASES += [
    JointCase(
        "chroma",
        fj.make_chroma,
        fj.chroma_call_kwargs,
        "chroma",
        _chroma_text,
        FLUX_ATTENTION,
        mask_arg="attention_mask",
        mask_spans_image=True,
        ids_arg="txt_ids",
        negative_lengths=_chroma_lengths,
    ),
    JointCase(
        "qwen-image",
        fj.make_qwenimage,
        fj.qwenimage_call_kwargs,
        "qwen-image",
        _qwen_text,
        QWEN_ATTENTION,
        mask_arg="encoder_hidden_states_mask",
        cfg_kwargs={"true_cfg_scale": 3.0, "negative_prompt": "ugly"},
        negative_lengths=_qwen_lengths,
    ),
    JointCase(
        "qwen-image-edit",
        fj.make_qwenimage_edit,
        fj.qwenimage_edit_call_kwargs,
        "qwen-image",
        _qwen_edit_text,
        QWEN_ATTENTION,
        mask_arg="encoder_hidden_states_mask",
        cfg_kwargs={"true_cfg_scale": 3.0, "negative_prompt": "ugly"},
        negative_lengths=_qwen_edit_lengths,
        batch_test=False,  # one reference image per prompt would be needed; Qwen-Image covers the batch case
    ),
    JointCase(
        "hunyuan-video",
        fj.make_hunyuan_video,
        fj.hunyuan_video_call_kwargs,
        "hunyuan-video",
        _hunyuan_text,
        HUNYUAN_ATTENTION,
        text_first=False,
        mask_arg="encoder_attention_mask",
        pooled=("pooled_projections", _hunyuan_pooled),
        cfg_kwargs={"true_cfg_scale": 3.0, "negative_prompt": "ugly"},
        attention_modules=("transformer_blocks.*.attn", "single_transformer_blocks.*.attn"),
        per_prompt="num_videos_per_prompt",
        negative_lengths=_hunyuan_lengths,
    ),
    JointCase(
        "flux2",
        _with_length(fj.make_flux2, 48),
        fj.flux2_call_kwargs,
        "flux2",
        _flux2_text,
        FLUX2_ATTENTION,
        ids_arg="txt_ids",
        ids_kind="arange",
        cfg_kwargs=None,
        negative_lengths=_flux2_lengths,
    ),
    JointCase(
        "flux2-klein",
        _with_length(fj.make_flux2_klein, 32),
        fj.flux2_klein_call_kwargs,
        "flux2",
        _flux2_text,
        FLUX2_ATTENTION,
        ids_arg="txt_ids",
        ids_kind="arange",
        cfg_kwargs={"guidance_scale": 3.0},
        negative_lengths=_flux2_lengths,
    ),
    JointCase(
        "z-image",
        fj.make_zimage,
        fj.zimage_call_kwargs,
        "z-image",
        _zimage_text,
        "diffusers.models.transformers.transformer_z_image",
        text_first=False,
        text_arg="cap_feats",
        cfg="batched-cond-first",
        cfg_kwargs={"guidance_scale": 3.0},
        negative_lengths=_zimage_lengths,
        attention_modules=("layers.*.attention",),
    ),
]


def _cogvideox_text(pipe, text):
    return pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=16)[0], None


def _cogvideox_lengths(pipe):
    short = pipe.encode_prompt("dog", do_classifier_free_guidance=False, max_sequence_length=8)[0]
    long = pipe.encode_prompt("blurry dog", do_classifier_free_guidance=False, max_sequence_length=24)[0]
    return short, long


JOINT_CASES += [
    JointCase(
        "cogvideox",
        fj.make_cogvideox,
        fj.cogvideox_call_kwargs,
        "cogvideox",
        _cogvideox_text,
        *SDPA,
        cfg="batched",
        cfg_kwargs={"guidance_scale": 3.0},
        per_prompt="num_videos_per_prompt",
        negative_lengths=_cogvideox_lengths,
        attention_modules=("attn1",),
        refused_negative_lengths=("longer",),  # the positional table fits the model's fixed text length only
        honours_per_prompt=False,
    ),
]


def _lumina2_text(pipe, text):
    return pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=64)[:2]


def _lumina2_lengths(pipe):
    """The real tokens only (the model drops the padding anyway): shorter and longer than the prompt's."""

    def real(text):
        embeds, mask = _lumina2_text(pipe, text)
        return embeds[:, : int(mask.sum())]

    return real("dog"), real("a very blurry low quality dark dog with glasses")


JOINT_CASES += [
    JointCase(
        "lumina2",
        fj.make_lumina2,
        fj.lumina2_call_kwargs,
        "lumina2",
        _lumina2_text,
        *SDPA,
        mask_arg="encoder_attention_mask",
        cfg_kwargs={"guidance_scale": 3.0},
        negative_lengths=_lumina2_lengths,
        attention_modules=("layers.*.attn",),
        trimmed_caption=True,
    ),
]


def _hidream_encode(pipe, text):
    return pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=16)


def _hidream_text(pipe, text):
    return _hidream_encode(pipe, text)[0], None


def _hidream_llama(pipe, text):
    return _hidream_encode(pipe, text)[2]  # (Llama layers, B, L, D)


def _hidream_pooled(pipe, text):
    return _hidream_encode(pipe, text)[4]


def _hidream_lengths(pipe):
    short = pipe.encode_prompt("dog", do_classifier_free_guidance=False, max_sequence_length=8)[0]
    long = pipe.encode_prompt("blurry dog", do_classifier_free_guidance=False, max_sequence_length=24)[0]
    return short, long


def _hidream_image_tokens(arguments):
    height, width = arguments["hidden_states"].shape[-2:]
    return (height // 2) * (width // 2)  # square latents, patch 2


JOINT_CASES += [
    JointCase(
        "hidream",
        fj.make_hidream,
        fj.hidream_call_kwargs,
        "hidream",
        _hidream_text,
        *SDPA,
        text_first=False,
        text_arg="encoder_hidden_states_t5",
        pooled=("pooled_embeds", _hidream_pooled),
        cfg="batched",
        negative_lengths=_hidream_lengths,
        attention_modules=("attn1",),
        refused_negative_lengths=("shorter", "longer"),  # embeddings cannot carry the Llama part of the text
        extra_text=("encoder_hidden_states_llama3", _hidream_llama, 1),
        image_tokens_of=_hidream_image_tokens,
    ),
]

BY_ID = {case.id: case for case in JOINT_CASES}
