"""Tiny, random, offline joint-attention (MMDiT-style) pipelines for the NAG tests: SD3 / SD3.5, FLUX.1 (dev and
Kontext), Chroma, Qwen-Image (and Edit), HunyuanVideo, FLUX.2 (dev and Klein), Z-Image, CogVideoX, Lumina 2 and
HiDream-I1.

Every component is built in memory from fixed seeds (sizes from diffusers' own test configurations where they exist):
no download, no file. Tokenizers come from in-memory vocabularies: T5 and CLIP ones from the image/video factories,
and for the chat-style LLM encoders (Qwen2.5-VL, Qwen3, Mistral 3, Llama, Gemma 2) a word-level tokenizer with
letter fallback (:func:`word_tokenizer`) whose pre-tokenizer splits like the real BPE ones do on the pipelines' fixed
prompt templates, so the templates' hard-coded token offsets (Qwen-Image's 34 / 64, HunyuanVideo's 95) drop exactly
the template, as with the real tokenizers. Where a pipeline renders a chat template, a small Jinja template in the
same layout is set.

Image sizes leave at least 16 image tokens per sample (per-token effects stay visible) and every 2-step call takes
a few tens of milliseconds on one CPU thread, except Qwen-Image-Edit (~0.45 s: the pipeline VAE-encodes its reference
image at ~1024² whatever the output size). ``*_call_kwargs`` give call arguments that decode nothing
(``output_type="latent"``) and take 2 steps with every form of classifier-free guidance off (``guidance_scale`` /
``true_cfg_scale`` at their "off" value; guidance-*distilled* models keep their embedded guidance scale).

Everything is a stock diffusers pipeline with stock components, with three stand-ins where the offline environment
(no torchvision) or CPU time forces one: FLUX.2's ``tokenizer`` is a plain tokenizer with a Mistral chat template
instead of a Pixtral processor; Qwen-Image-Edit's Qwen2-VL processor is built with ``video_processor=None``; and
HiDream's ``default_sample_size`` instance attribute is lowered so that its fixed output area stays small.
"""

from __future__ import annotations

import re
import string

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from nag_guidance.testing.image import _clip_text, clip_tokenizer
from nag_guidance.testing.video import WORDS, _t5_encoder, tiny_image, tiny_tokenizer

# ------------------------------------------------------------------------------------------------- tokenizers

# Splits like the byte-level BPE tokenizers of Qwen / Llama-3 / Mistral do on the pipelines' templates: special
# tokens whole, "'s" alone, words alone, runs of punctuation together, runs of newlines together, and a space before
# a digit on its own (those tokenizers never merge a space into a number).
_WORD_SPLIT = r"'s| (?=\d)|\w+|[^\w\s]+|\n+"


def word_tokenizer(
    special_tokens: list[str],
    corpus: str = "",
    pad_token: str | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    chat_template: str | None = None,
    model_max_length: int = 4096,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer built in memory: every word of ``WORDS`` and of ``corpus`` (the pipeline's
    fixed prompt template) is one token, any other word falls back to single letters, so every prompt is encodable and
    different prompts give different ids. ``special_tokens`` come first (ids 0, 1, ...), in the given order; with a
    ``bos_token`` every encoding starts with it (as Llama / Gemma tokenizers do)."""
    pieces: list[str] = []
    for piece in [
        "[UNK]",
        " ",
        *WORDS,
        *re.findall(_WORD_SPLIT, corpus.lower()),
        *(string.ascii_lowercase + string.digits + ",.!?-'():;\"/"),
        *(f"##{c}" for c in string.ascii_lowercase + string.digits),
    ]:
        if piece not in pieces and piece not in special_tokens:
            pieces.append(piece)
    vocab = {token: i for i, token in enumerate([*special_tokens, *pieces])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=64))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD_SPLIT), behavior="removed", invert=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token=pad_token,
        bos_token=bos_token,
        eos_token=eos_token,
        additional_special_tokens=[t for t in special_tokens if t not in (pad_token, bos_token, eos_token)],
        model_max_length=model_max_length,
        padding_side=padding_side,
    )
    if bos_token is not None:
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, vocab[bos_token])],
        )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


# ------------------------------------------------------------------------------------------------- shared parts


def _flux_vae(latent_channels: int = 4):
    """FLUX.1 / SD3-style AutoencoderKL with one level (``vae_scale_factor`` 1), as in diffusers' tests."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def _flow_scheduler(**kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**kwargs)


# ------------------------------------------------------------------------------------------------- SD3 / SD3.5


def make_sd3(dual_attention_layers: tuple[int, ...] = (), qk_norm: str | None = None):
    """StableDiffusion3Pipeline: two joint (MMDiT) blocks, the last one ``context_pre_only``; CLIP-L, CLIP-G (hidden 16
    each, concatenated to 32 = the T5 width) and T5. ``dual_attention_layers`` gives those blocks an ``attn2`` image
    self-attention (SD3.5 "MMDiT-X")."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = clip_tokenizer()
    text_encoder = _clip_text(tokenizer, hidden=16, projection=True, seed=0)
    text_encoder_2 = _clip_text(tokenizer, hidden=16, projection=True, seed=2)
    tokenizer_3 = tiny_tokenizer(model_max_length=256)
    torch.manual_seed(4)
    text_encoder_3 = _t5_encoder(tokenizer_3.vocab_size)
    torch.manual_seed(1)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        dual_attention_layers=dual_attention_layers,
        qk_norm=qk_norm,
    ).eval()
    torch.manual_seed(3)
    vae = _flux_vae(latent_channels=4)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sd35():
    """SD3.5-style: block 0 is a dual-attention block (``attn2`` = image-only self-attention), RMS QK-norm."""
    return make_sd3(dual_attention_layers=(0,), qk_norm="rms_norm")


def sd3_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (VAE factor 1, patch 2 → 64 image tokens); text = 77 CLIP + 16 T5 tokens; CFG off."""
    kwargs = dict(
        height=16, width=16, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- FLUX.1


def _flux_transformer(guidance_embeds: bool = True):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    ).eval()


def _flux_components(guidance_embeds: bool = True) -> dict:
    tokenizer = clip_tokenizer()
    text_encoder = _clip_text(tokenizer, hidden=32, seed=0)
    tokenizer_2 = tiny_tokenizer(model_max_length=512)
    torch.manual_seed(2)
    text_encoder_2 = _t5_encoder(tokenizer_2.vocab_size)
    torch.manual_seed(1)
    transformer = _flux_transformer(guidance_embeds)
    torch.manual_seed(3)
    vae = _flux_vae(latent_channels=4)
    return dict(
        scheduler=_flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def make_flux(guidance_embeds: bool = True):
    """FluxPipeline (FLUX.1-dev-style: guidance-distilled, ``guidance_embeds``): 2 double-stream + 2 single-stream
    blocks, CLIP-L (pooled → ``temb``) + T5 (sequence). ``true_cfg_scale > 1`` with a ``negative_prompt`` runs real
    CFG (a second transformer call)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**_flux_components(guidance_embeds))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (VAE factor 1, 2×2 packing → 64 image tokens), 16 T5 tokens, true CFG off (the embedded
    distilled guidance stays at the pipeline default 3.5)."""
    kwargs = dict(
        height=16,
        width=16,
        num_inference_steps=2,
        guidance_scale=3.5,
        true_cfg_scale=1.0,
        max_sequence_length=16,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


def make_flux_kontext():
    """FluxKontextPipeline: the FLUX.1 transformer; the reference image's latents are appended after the noisy image
    tokens (ids with first coordinate 1)."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline(**_flux_components(True))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_kontext_call_kwargs(**overrides) -> dict:
    """As :func:`flux_call_kwargs` plus a 16×16 reference image (64 more image tokens); ``max_area`` = 16·16 and no
    auto-resize to Kontext's preferred resolutions, so the output stays 16×16."""
    kwargs = flux_call_kwargs(image=tiny_image(seed=5, size=16), max_area=16 * 16, _auto_resize=False)
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- Chroma


def make_chroma():
    """ChromaPipeline: FLUX-like (2 double + 2 single blocks) without CLIP/pooled text and with a distilled-guidance
    approximator producing every block's modulation from the timestep alone; T5 with a text attention mask."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    tokenizer = tiny_tokenizer(model_max_length=512)
    torch.manual_seed(2)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 4, 8),
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    ).eval()
    torch.manual_seed(3)
    vae = _flux_vae(latent_channels=4)
    pipe = ChromaPipeline(
        scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def chroma_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (64 image tokens), 16 T5 tokens, CFG off (``guidance_scale=1``)."""
    kwargs = dict(
        height=16, width=16, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- Qwen-Image

_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _qwen25_vl(tokenizer: PreTrainedTokenizerFast):
    """Qwen2.5-VL with diffusers' test sizes (text hidden 16, 2 layers, M-RoPE sections (1, 1, 2); vision depth 2,
    hidden 16), a vocabulary the size of ``tokenizer``'s and its vision token ids."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1000000.0},
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _qwen_transformer():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ).eval()


def _qwen_vae(edit: bool = False):
    """Qwen-Image's Wan-style causal VAE, z_dim 4. The text-to-image one is diffusers' test VAE (factor 4). The edit
    pipeline always VAE-encodes its reference image at ~1024² pixels, so its VAE is 1 channel wide at full resolution
    (2 below, so that the decoder's halving upsamplers keep at least one channel) with five downsamplings (factor 32:
    32×32 latents → 256 reference tokens after packing, and a small mid-block attention); that encode alone still
    takes ~0.4 s on one CPU thread (CPU ``conv3d`` at 1024²)."""
    from diffusers import AutoencoderKLQwenImage

    if edit:
        return AutoencoderKLQwenImage(
            base_dim=1,
            z_dim=4,
            dim_mult=[1, 2, 2, 2, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, False, False, True, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ).eval()
    return AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()


def make_qwenimage():
    """QwenImagePipeline: a two-block dual-stream MMDiT (every block keeps separate text/image weights; no single
    blocks) and a Qwen2.5-VL text encoder behind the pipeline's chat template (its first 34 tokens are dropped)."""
    from diffusers import QwenImagePipeline

    torch.manual_seed(1)
    transformer = _qwen_transformer()
    torch.manual_seed(3)
    vae = _qwen_vae()
    pipe = QwenImagePipeline(
        scheduler=_flow_scheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )
    tokenizer = word_tokenizer(_QWEN_SPECIALS, corpus=pipe.prompt_template_encode, pad_token="<|endoftext|>")
    torch.manual_seed(0)
    pipe.register_modules(tokenizer=tokenizer, text_encoder=_qwen25_vl(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def qwenimage_call_kwargs(**overrides) -> dict:
    """2 steps at 64×64 (VAE factor 4, 2×2 packing → 64 image tokens), true CFG off (``true_cfg_scale=1``; the
    pipeline's default is 4.0, which is real CFG whenever a negative prompt is given)."""
    kwargs = dict(
        height=64, width=64, num_inference_steps=2, true_cfg_scale=1.0, max_sequence_length=64, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs


def _without_video_processor(processor_cls, **components):
    """Builds a transformers multimodal processor with ``video_processor=None``. Without torchvision, transformers 5
    cannot even resolve the ``BaseVideoProcessor`` class its argument check looks up (``VIDEO_PROCESSOR_MAPPING`` is
    a placeholder), so that one check is skipped for a ``None`` argument while building."""
    from unittest import mock

    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class

    def check_unless_none(self, name, argument):
        return None if argument is None else check(self, name, argument)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", check_unless_none):
        return processor_cls(video_processor=None, **components)


def make_qwenimage_edit():
    """QwenImageEditPipeline: the Qwen-Image transformer; the reference image enters twice: VAE latents appended
    after the noisy image tokens, and as Qwen2.5-VL vision tokens inside the prompt (the processor's image processor
    is capped at 56×56 pixels → 16 patches → 4 ``<|image_pad|>`` tokens). The pipeline resizes the reference image to
    ~1024² pixels whatever the output size, hence the narrow factor-32 VAE (256 reference-image tokens)."""
    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    torch.manual_seed(1)
    transformer = _qwen_transformer()
    torch.manual_seed(3)
    vae = _qwen_vae(edit=True)
    pipe = QwenImageEditPipeline(
        scheduler=_flow_scheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        processor=None,
        transformer=transformer,
    )
    tokenizer = word_tokenizer(_QWEN_SPECIALS, corpus=pipe.prompt_template_encode, pad_token="<|endoftext|>")
    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    processor = _without_video_processor(Qwen2VLProcessor, image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(0)
    pipe.register_modules(tokenizer=tokenizer, processor=processor, text_encoder=_qwen25_vl(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def qwenimage_edit_call_kwargs(**overrides) -> dict:
    """2 steps at 256×256 (factor-32 VAE → 8×8 latents → 16 noisy image tokens, followed by 256 reference-image
    tokens) with a 32×32 reference image; true CFG off. ~0.4 s per call, nearly all of it the VAE encode of the
    reference image at 1024². For a list of prompts pass a list with one image per prompt: the processor needs one
    image per ``<|image_pad|>``."""
    kwargs = dict(
        image=tiny_image(seed=5, size=32),
        height=256,
        width=256,
        num_inference_steps=2,
        true_cfg_scale=1.0,
        max_sequence_length=64,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- HunyuanVideo

_LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def make_hunyuan_video():
    """HunyuanVideoPipeline (guidance-distilled, ``guidance_embeds``): 1 double-stream + 1 single-stream block and a
    one-block token refiner; a 3-layer Llama text encoder (the pipeline takes ``hidden_states[-3]``) behind the stock
    prompt template, whose first 95 tokens (``crop_start``) are the template with this tokenizer as with the real one;
    CLIP (hidden 8) gives the pooled vector."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = word_tokenizer(
        _LLAMA3_SPECIALS,
        corpus=DEFAULT_PROMPT_TEMPLATE["template"],
        bos_token="<|begin_of_text|>",
        pad_token="<|end_of_text|>",
        eos_token="<|eot_id|>",
    )
    torch.manual_seed(0)
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    tokenizer_2 = clip_tokenizer()
    torch.manual_seed(2)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=8,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer_2.get_vocab()),
            max_position_embeddings=tokenizer_2.model_max_length,
        )
    ).eval()
    torch.manual_seed(1)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).eval()
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=_flow_scheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_video_call_kwargs(**overrides) -> dict:
    """2 steps, 32×32, 9 frames → latents 3×4×4 → 48 video tokens; 16 Llama tokens after the template; true CFG off
    (the embedded distilled guidance stays at the pipeline default 6.0)."""
    kwargs = dict(
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=6.0,
        true_cfg_scale=1.0,
        max_sequence_length=16,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- FLUX.2

# Mistral-style chat layout ("v7"): system prompt and user turn in bracketed control tokens, text parts of
# multimodal content joined.
_MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join('') %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)

# Qwen3-style chat layout, with the empty think block that ``enable_thinking=False`` adds.
_QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _flux2_vae():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def _flux2_transformer(guidance_embeds: bool):
    """2 double-stream + 2 single-stream (parallel attention+MLP) blocks; text width 48 = 3 stacked encoder layers
    of 16."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    ).eval()


def make_flux2():
    """Flux2Pipeline (FLUX.2-dev-style: guidance-distilled, no negative prompt and no CFG in the pipeline). Text: a
    30-layer Mistral-3 (hidden 16) whose layers 10, 20, 30 are stacked (the pipeline default). The real ``tokenizer``
    component is a Pixtral processor, which transformers only builds with torchvision; the pipeline's text path only
    calls its ``apply_chat_template``, so a plain tokenizer with a Mistral-style chat template stands in (caption
    upsampling, which needs the processor and generation, is not supported)."""
    from diffusers import Flux2Pipeline
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
    specials += ["[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>"]
    tokenizer = word_tokenizer(
        specials,
        corpus=SYSTEM_MESSAGE,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=_MISTRAL_CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 37,
            "max_position_embeddings": 512,
            "num_attention_heads": 4,
            "num_hidden_layers": 30,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "bos_token_id": ids("<s>"),
            "eos_token_id": ids("</s>"),
            "pad_token_id": ids("<pad>"),
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "image_size": 32,
            "patch_size": 16,
            "num_channels": 3,
        },
        image_token_index=ids("[IMG]"),
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    text_encoder = Mistral3ForConditionalGeneration(config).eval()
    torch.manual_seed(1)
    transformer = _flux2_transformer(guidance_embeds=True)
    torch.manual_seed(3)
    vae = _flux2_vae()
    pipe = Flux2Pipeline(
        scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux2_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (VAE factor 1, 2×2 patchify → 64 image tokens); 48 text tokens (the system message takes
    ~35 of them); embedded distilled guidance at the pipeline default 4.0 (there is no CFG to turn off)."""
    kwargs = dict(
        height=16, width=16, num_inference_steps=2, guidance_scale=4.0, max_sequence_length=48, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs


def make_flux2_klein(is_distilled: bool = False):
    """Flux2KleinPipeline: the FLUX.2 transformer without guidance embedding; a 27-layer Qwen3 (hidden 16) whose layers
    9, 18, 27 are stacked (the pipeline default), behind a Qwen3-style chat template. ``is_distilled=False`` (base
    model): ``guidance_scale > 1`` is real CFG against the empty prompt (the pipeline has no ``negative_prompt``)."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = word_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        pad_token="<|endoftext|>",
        chat_template=_QWEN3_CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            intermediate_size=16,
            hidden_size=16,
            num_hidden_layers=27,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    torch.manual_seed(1)
    transformer = _flux2_transformer(guidance_embeds=False)
    torch.manual_seed(3)
    vae = _flux2_vae()
    pipe = Flux2KleinPipeline(
        scheduler=_flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=is_distilled,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux2_klein_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (64 image tokens), prompts padded to 32 tokens, CFG off (``guidance_scale=1``)."""
    kwargs = dict(
        height=16, width=16, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=32, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- Z-Image


def make_zimage():
    """ZImagePipeline: a single-stream DiT (1 noise-refiner block on image tokens, 1 context-refiner block on text
    tokens, 2 joint blocks over ``[image, text]``), fed lists of unpadded per-sample tensors; a 2-layer Qwen3 text
    encoder (``hidden_states[-2]``) behind a Qwen3-style chat template."""
    from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = word_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        pad_token="<|endoftext|>",
        chat_template=_QWEN3_CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    torch.manual_seed(1)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    ).eval()
    # Both pad tokens are created with `torch.empty` (diffusers' tests fix them too).
    with torch.no_grad():
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    torch.manual_seed(3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[8, 8],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()
    pipe = ZImagePipeline(
        scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def zimage_call_kwargs(**overrides) -> dict:
    """2 steps at 32×32 (VAE factor 2, patch 2 → 64 image tokens), prompts padded to 64 tokens before the pipeline
    drops the padding; CFG off: Z-Image's CFG runs whenever ``guidance_scale > 0`` (``pos + g·(pos − neg)``)."""
    kwargs = dict(
        height=32, width=32, num_inference_steps=2, guidance_scale=0.0, max_sequence_length=64, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- CogVideoX


def make_cogvideox():
    """CogVideoXPipeline (CogVideoX-2b-style: 3D sin-cos positions added to the image tokens, no RoPE): one expert-
    adaLN block whose attention runs over ``[text, video]``; T5 text encoder. The transformer's
    ``max_text_seq_length`` is 16, so calls must pass ``max_sequence_length=16``."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    tokenizer = tiny_tokenizer(model_max_length=226)
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogvideox_call_kwargs(**overrides) -> dict:
    """2 steps, 64×64, 9 frames → latents 3×8×8 → patch 2 → 48 video tokens; 16 T5 tokens; CFG off. The stock
    pipeline overrides ``num_videos_per_prompt`` to 1."""
    kwargs = dict(
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=1.0,
        use_dynamic_cfg=False,
        max_sequence_length=16,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- Lumina 2


def make_lumina2():
    """Lumina2Pipeline: a single-stream DiT (1 noise-refiner block, 1 context-refiner block, 2 joint blocks over
    ``[text, image]``, each unpadded text length kept), Gemma-2 text encoder (``hidden_states[-2]``) behind the
    pipeline's system prompt."""
    from diffusers import AutoencoderKL, Lumina2Pipeline, Lumina2Transformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    probe = Lumina2Pipeline(transformer=None, scheduler=None, vae=None, text_encoder=None, tokenizer=None)
    tokenizer = word_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        corpus=probe.system_prompt + " <Prompt Start> ",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    torch.manual_seed(0)
    text_encoder = Gemma2Model(
        Gemma2Config(
            head_dim=8,
            hidden_size=16,
            intermediate_size=32,
            max_position_embeddings=256,
            num_attention_heads=2,
            num_hidden_layers=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    torch.manual_seed(1)
    transformer = Lumina2Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        hidden_size=16,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=2,
        multiple_of=16,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        scaling_factor=1.0,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(300, 64, 64),
        cap_feat_dim=16,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=32,
    ).eval()
    pipe = Lumina2Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lumina2_call_kwargs(**overrides) -> dict:
    """2 steps at 128×128 (the pipeline hard-codes a VAE factor of 8 → 16×16 latents, patch 2 → 64 image tokens),
    prompts (after the ~30-token system prompt) padded to 64 tokens; CFG off (``guidance_scale=1``)."""
    kwargs = dict(
        height=128, width=128, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=64, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------------------------- HiDream-I1


def make_hidream():
    """HiDreamImagePipeline: 1 double-stream + 1 single-stream block with a 4-expert MoE feed-forward; four text
    encoders: CLIP-L and CLIP-G (pooled → ``temb``), T5 (sequence), and a 2-layer Llama whose every layer's hidden
    states are handed to the transformer (``llama_layers`` picks one per block)."""
    from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = clip_tokenizer(max_length=128)
    text_encoder = _clip_text(tokenizer, hidden=32, projection=True, seed=0)
    text_encoder_2 = _clip_text(tokenizer, hidden=32, projection=True, seed=2)
    tokenizer_3 = tiny_tokenizer(model_max_length=128)
    torch.manual_seed(4)
    text_encoder_3 = _t5_encoder(tokenizer_3.vocab_size)
    tokenizer_4 = word_tokenizer(
        _LLAMA3_SPECIALS, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
    )
    torch.manual_seed(5)
    text_encoder_4 = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer_4),
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            bos_token_id=tokenizer_4.bos_token_id,
            eos_token_id=tokenizer_4.eos_token_id,
            pad_token_id=tokenizer_4.pad_token_id,
        )
    ).eval()
    torch.manual_seed(1)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[32, 16],
        text_emb_dim=64,
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(32, 32),
        llama_layers=(0, 1),
    ).eval()
    torch.manual_seed(3)
    vae = _flux_vae(latent_channels=4)
    pipe = HiDreamImagePipeline(
        scheduler=_flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(max_length=128),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
        text_encoder_4=text_encoder_4,
        tokenizer_4=tokenizer_4,
        transformer=transformer,
    )
    # HiDream rescales every requested size to an area of (default_sample_size · vae_scale_factor)² pixels
    # (pipeline_hidream_image.py:813-817); at the stock 128 that is 4096 image tokens. This instance attribute (set
    # in __init__, not configurable) is the only non-stock setting among these factories.
    pipe.default_sample_size = 16
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hidream_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (VAE factor 1, patch 2 → 64 image tokens; the factory's ``default_sample_size`` of 16 fixes
    the area), every text encoder at 16 tokens; CFG off."""
    kwargs = dict(
        height=16, width=16, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=16, output_type="latent"
    )
    kwargs.update(overrides)
    return kwargs
