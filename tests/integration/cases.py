"""The tiny pipelines of the cross-attention families, with what the tests need to know about each.

What a ``Case`` says about a family (how its negative is encoded for the denoiser, how its CFG branches are
laid out) is written here independently of the package, so that the tests check the package against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nag_guidance.testing import image as fi
from nag_guidance.testing import video as fv


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]
    call_kwargs: Callable[..., dict]
    family: str
    encode_negative: Callable[[Any, list[str]], tuple[torch.Tensor, torch.Tensor | None]]
    denoisers: tuple[str, ...] = ("transformer",)
    text_arg: str = "encoder_hidden_states"
    mask_arg: str | None = "encoder_attention_mask"
    cfg: str = "batched"  # "batched": one [uncond, cond] forward; "separate": cond, then uncond forward
    per_prompt: str | None = "num_images_per_prompt"  # None: the pipeline makes one output per prompt
    images_per_prompt: int = 2  # what the batch test asks for
    inputs: dict = field(default_factory=dict)  # extra call inputs (e.g. the I2V image)
    text_layers: str = "attn2"  # the text-attention layers, as ``reference.is_text_layer`` matches them
    batch_test: bool = True  # whether the stock pipeline can make 2 prompts × ``images_per_prompt`` in one call

    def kwargs(self, **overrides) -> dict:
        return {**self.inputs, **self.call_kwargs(**overrides)}


def _sd_negative(pipe, negatives):
    return pipe.encode_prompt(negatives, torch.device("cpu"), 1, False)[0], None


def _sdxl_negative(pipe, negatives):
    return pipe.encode_prompt(negatives, device=torch.device("cpu"), do_classifier_free_guidance=False)[0], None


def _t5_style_negative(**options):
    def encode(pipe, negatives):
        embeds, mask, *_ = pipe.encode_prompt(negatives, do_classifier_free_guidance=False, **options)
        return embeds, mask

    return encode


def _wan_negative(pipe, negatives):
    return fv.wan_prompt_embeds(pipe, negatives), None


def _wan16_negative(pipe, negatives):
    return fv.wan_prompt_embeds(pipe, negatives, max_sequence_length=16), None


def _wan16_kwargs(**overrides):
    """Wan call arguments with the text padded to 16 tokens (not 512: the prompt's few tokens then weigh enough
    against the padding for NAG to move a tiny random model's output clearly)."""
    return fv.wan_call_kwargs(**{"max_sequence_length": 16, **overrides})


def _latte_negative(pipe, negatives):
    """Cut to its real length, as the pipeline cuts the prompt (``mask_feature``); no mask."""
    return pipe.encode_prompt(negatives, do_classifier_free_guidance=False, clean_caption=False)[0], None


def _i2vgen_xl_negative(pipe, negatives):
    pipe._guidance_scale = 1.0  # its encode_prompt reads whether CFG is on from the running call's state
    return pipe.encode_prompt(negatives, torch.device("cpu"), 1)[0], None


def _ltx2_negative(pipe, negatives):
    embeds, mask, *_ = pipe.encode_prompt(negatives, do_classifier_free_guidance=False, max_sequence_length=16)
    video, _audio, mask = pipe.connectors(embeds, mask, padding_side=pipe.tokenizer.padding_side)
    return video, mask


def _image_kwargs(**overrides):
    return fi.image_call_kwargs(**overrides)


CASES: list[Case] = [
    Case("sd15", fi.make_sd, _image_kwargs, "sd", _sd_negative, denoisers=("unet",)),
    Case("sdxl", fi.make_sdxl, _image_kwargs, "sdxl", _sdxl_negative, denoisers=("unet",)),
    Case(
        "sdxl-img2img",
        lambda: fi.make_sdxl(img2img=True),
        lambda **o: fi.image_call_kwargs(**{"num_inference_steps": 4, "strength": 0.6, **o}),
        "sdxl",
        _sdxl_negative,
        denoisers=("unet",),
        inputs={"image": torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))},
    ),
    Case(
        "pixart-alpha",
        fi.make_pixart,
        fi.pixart_call_kwargs,
        "pixart",
        _t5_style_negative(max_sequence_length=16),
    ),
    Case(
        "pixart-sigma",
        lambda: fi.make_pixart(sigma=True),
        fi.pixart_call_kwargs,
        "pixart",
        _t5_style_negative(max_sequence_length=16),
    ),
    Case(
        "sana",
        fi.make_sana,
        fi.sana_call_kwargs,
        "sana",
        _t5_style_negative(max_sequence_length=16, complex_human_instruction=None),
    ),
    Case(
        "wan21-t2v",
        fv.make_wan_t2v,
        fv.wan_call_kwargs,
        "wan",
        _wan_negative,
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
    ),
    Case(
        "wan22-t2v",
        lambda: fv.make_wan_t2v(dual=True),
        fv.wan_call_kwargs,
        "wan",
        _wan_negative,
        denoisers=("transformer", "transformer_2"),
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
    ),
    Case(
        "wan21-i2v",
        fv.make_wan_i2v,
        fv.wan_call_kwargs,
        "wan",
        _wan_negative,
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
        images_per_prompt=1,  # stock WanImageToVideoPipeline fails for num_videos_per_prompt > 1 (0.42.1)
        inputs={"image": fv.tiny_image()},
    ),
    Case(
        "wan22-i2v",
        lambda: fv.make_wan_i2v(dual=True),
        fv.wan_call_kwargs,
        "wan",
        _wan_negative,
        denoisers=("transformer", "transformer_2"),
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
        inputs={"image": fv.tiny_image()},
    ),
    Case(
        "ltx",
        fv.make_ltx,
        fv.ltx_call_kwargs,
        "ltx",
        _t5_style_negative(max_sequence_length=16),
        per_prompt="num_videos_per_prompt",
    ),
    Case(
        "ltx2",
        fv.make_ltx2,
        fv.ltx2_call_kwargs,
        "ltx2",
        _ltx2_negative,
        per_prompt="num_videos_per_prompt",
    ),
    Case(
        "ltx2.0",
        lambda: fv.make_ltx2(modulated=False),
        fv.ltx2_call_kwargs,
        "ltx2",
        _ltx2_negative,
        per_prompt="num_videos_per_prompt",
    ),
]

CASES += [
    Case(
        case_id,
        lambda dual=dual: fv.make_wan_vace(dual=dual),
        _wan16_kwargs,
        "wan-vace",
        _wan16_negative,
        denoisers=("transformer", "transformer_2"),
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
        inputs={"video": fv.tiny_video()},
        batch_test=False,  # stock WanVACEPipeline makes one video per call (0.42.1); batch 2: test_video_families
    )
    for case_id, dual in (("wan21-vace", False), ("wan22-vace", True))
]

CASES.append(
    Case(
        "chronoedit",
        fv.make_chronoedit,
        fv.chronoedit_call_kwargs,
        "chronoedit",
        _wan_negative,  # 512 tokens: the processor finds the text as the last 512 (after the image tokens)
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
        images_per_prompt=1,  # stock ChronoEditPipeline fails for num_videos_per_prompt > 1 (0.42.1)
    )
)

_SKYREELS_INPUTS = {
    "t2v": {},
    "i2v": {"image": fv.tiny_image()},
    "df": {},
    "df-i2v": {"image": fv.tiny_image()},
    "df-v2v": {"video": fv.tiny_video(), "overlap_history": 1, "base_num_frames": 5},  # one prefix latent frame
}

CASES += [
    Case(
        f"skyreels-v2-{kind}",
        lambda kind=kind: fv.make_skyreels_v2(kind),
        fv.wan_call_kwargs if kind == "i2v" else _wan16_kwargs,  # I2V: its processor hard-codes 512 text tokens
        "skyreels-v2",
        _wan_negative if kind == "i2v" else _wan16_negative,
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
        images_per_prompt=2 if kind in ("t2v", "df") else 1,  # stock I2V pipelines fail for 2 prompts × 2 videos;
        # the DF V2V one makes one video per prompt whatever num_videos_per_prompt says (0.42.1)
        inputs=inputs,
    )
    for kind, inputs in _SKYREELS_INPUTS.items()
]

CASES.append(
    Case(
        "wan-animate",
        fv.make_wan_animate,
        fv.wan_animate_call_kwargs,
        "wan-animate",
        _wan_negative,  # 512 tokens: the processor finds the text as the last 512 (after the image tokens)
        mask_arg=None,
        cfg="separate",
        per_prompt="num_videos_per_prompt",
    )
)

CASES.append(
    Case(
        "allegro",
        fv.make_allegro,
        fv.allegro_call_kwargs,
        "allegro",
        _t5_style_negative(max_sequence_length=16),
        per_prompt="num_videos_per_prompt",
        images_per_prompt=1,  # AllegroPipeline sets num_videos_per_prompt = 1 whatever it is given (0.42.1)
    )
)

CASES.append(
    Case(
        "latte",
        fv.make_latte,
        fv.latte_call_kwargs,
        "latte",
        _latte_negative,
    )
)

CASES += [
    Case(
        "sana-video",
        fv.make_sana_video,
        fv.sana_video_call_kwargs,
        "sana-video",
        _t5_style_negative(max_sequence_length=16, complex_human_instruction=[]),
        per_prompt="num_videos_per_prompt",
    ),
    Case(
        "sana-video-i2v",
        lambda: fv.make_sana_video(i2v=True),
        fv.sana_video_call_kwargs,
        "sana-video",
        _t5_style_negative(max_sequence_length=16, complex_human_instruction=[]),
        per_prompt="num_videos_per_prompt",
        images_per_prompt=1,  # stock SanaImageToVideoPipeline fails for num_videos_per_prompt > 1 (0.42.1)
        inputs={"image": fv.tiny_image()},
    ),
]

_SPATIAL_ATTN2 = "*.attentions.*.attn2"  # the 3D UNets' spatial transformers (not temp_attentions, transformer_in)


def _v2v_sd_kwargs(**overrides):
    kwargs = fv.text_to_video_sd_call_kwargs(**{"num_inference_steps": 4, "strength": 0.6, **overrides})
    return {k: v for k, v in kwargs.items() if k not in ("height", "width", "num_frames")}  # from the video


CASES += [
    Case(
        "text-to-video-sd",
        fv.make_text_to_video_sd,
        fv.text_to_video_sd_call_kwargs,
        "text-to-video-sd",
        _sd_negative,
        denoisers=("unet",),
        mask_arg=None,
        per_prompt=None,
        images_per_prompt=1,
        text_layers=_SPATIAL_ATTN2,
    ),
    Case(
        "video-to-video-sd",
        lambda: fv.make_text_to_video_sd(v2v=True),
        _v2v_sd_kwargs,
        "text-to-video-sd",
        _sd_negative,
        denoisers=("unet",),
        mask_arg=None,
        per_prompt=None,
        images_per_prompt=1,
        text_layers=_SPATIAL_ATTN2,
        inputs={"video": fv.tiny_video(3, 16)},
        batch_test=False,  # stock VideoToVideoSDPipeline takes one video, which it does not repeat for 2 prompts
    ),
]

CASES.append(
    Case(
        "i2vgen-xl",
        fv.make_i2vgen_xl,
        fv.i2vgen_xl_call_kwargs,
        "i2vgen-xl",
        _i2vgen_xl_negative,
        denoisers=("unet",),
        mask_arg=None,
        per_prompt="num_videos_per_prompt",
        images_per_prompt=1,
        text_layers=_SPATIAL_ATTN2,
        batch_test=False,  # stock I2VGenXLPipeline fails for 2 prompts (0.42.1); batch 2: test_video_families
    )
)

BY_ID = {case.id: case for case in CASES}
