"""Per-pipeline facts beside detection: the pipelines NAG refuses (with why), and the few that feed a guided
denoiser in a way of their own (another encode method or tuple, a batch of more than CFG's two branches).

Both tables are keyed by the stock pipeline class name, so adding a pipeline is one line (or one small record)
here, never a new field on ``Family``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_IMAGE_EMBEDS = (
    "its UNet attends to the prior's image embeddings, not to text (Kandinsky 2.x decoders): there is no text "
    "attention for NAG to guide"
)
_COMBINED = "it wraps a Kandinsky 2.x prior and decoder; the decoder attends to image embeddings, not to text"
_CLASS_LABELS = (
    "its UNet takes the text as class labels (a CLAP vector added to the timestep embedding), not through "
    "attention: there is no text attention for NAG to guide"
)

_OWN_PROCESSORS = (
    "it installs attention processors of its own on every UNet layer during the call ({what}), which replace "
    "NAG's text-attention wrappers"
)
_ADDED_KV = (
    "DeepFloyd IF's UNet joins the T5 text to each self-attention's keys and values (added-KV attention, no "
    "separate text-attention layer), which NAG's cross-attention path does not split yet"
)
_INLINE_TEXT = (
    "it encodes its prompts inline in __call__, not through encode_prompt, so NAG cannot encode the negative "
    "the way the pipeline encodes the prompt"
)

REFUSED: dict[str, str] = {
    "KandinskyPipeline": _IMAGE_EMBEDS,
    "KandinskyImg2ImgPipeline": _IMAGE_EMBEDS,
    "KandinskyInpaintPipeline": _IMAGE_EMBEDS,
    "KandinskyCombinedPipeline": _COMBINED,
    "KandinskyImg2ImgCombinedPipeline": _COMBINED,
    "KandinskyInpaintCombinedPipeline": _COMBINED,
    "KandinskyV22CombinedPipeline": _COMBINED,
    "KandinskyV22Img2ImgCombinedPipeline": _COMBINED,
    "KandinskyV22InpaintCombinedPipeline": _COMBINED,
    "AudioLDMPipeline": _CLASS_LABELS,
    "MusicLDMPipeline": _CLASS_LABELS,
    "StableDiffusionAttendAndExcitePipeline": _OWN_PROCESSORS.format(what="to store and steer per-token maps"),
    "TextToVideoZeroPipeline": _OWN_PROCESSORS.format(what="cross-frame attention"),
    "TextToVideoZeroSDXLPipeline": _OWN_PROCESSORS.format(what="cross-frame attention"),
    "SemanticStableDiffusionPipeline": _INLINE_TEXT,
    "LDMTextToImagePipeline": _INLINE_TEXT,
    "StableDiffusionParadigmsPipeline": (
        "it batches a window of denoising steps in parallel, [uncond; cond] per window, without a flag that tells "
        "the two halves apart from an unguided call of as many rows"
    ),
    **dict.fromkeys(
        (
            "IFPipeline",
            "IFImg2ImgPipeline",
            "IFInpaintingPipeline",
            "IFSuperResolutionPipeline",
            "IFImg2ImgSuperResolutionPipeline",
            "IFInpaintingSuperResolutionPipeline",
        ),
        _ADDED_KV,
    ),
}
"""Pipeline class -> why NAG cannot guide it; ``detect`` raises ``NotImplementedError`` with the reason."""


def _branch_rows(pipe: Any, batch: int, prompts: int) -> slice | None:
    """Pipelines that batch [uncond, cond, perturbed] by their own flags: PAG (no perturbed branch with
    ``pag_scale`` 0, no uncond without CFG) and AnimateDiff (its text rows repeated per frame); the joint
    families' PAG layers run PAG's own processor for the whole batch, unguided. The cond branch,
    never the perturbed one, whose self-attention PAG replaces and whose text attention stays stock."""
    pag = bool(getattr(pipe, "do_perturbed_attention_guidance", False))
    flag = getattr(pipe, "do_classifier_free_guidance", None)  # PixArt-Σ PAG keeps it local: the batch tells
    cfg = bool(flag) if flag is not None else batch == (2 + pag) * prompts
    branches = 1 + cfg + pag
    if batch % (branches * prompts):
        return None
    size = batch // branches
    return slice(size, 2 * size) if cfg else slice(0, size)


def _pix2pix_rows(pipe: Any, batch: int, prompts: int) -> slice | None:
    """InstructPix2Pix batches [text + image, image only, uncond] (the last two under the CFG negative's text):
    the text-conditioned branch is the first. (Batch N is the no-CFG call; SDXL's pipeline keeps its CFG flag
    local, so the batch tells.)"""
    return slice(0, prompts) if batch in (prompts, 3 * prompts) else None


def _cycle_rows(pipe: Any, batch: int, prompts: int) -> slice | None:
    """CycleDiffusion batches [source uncond, uncond, source cond, cond]: the target prompt's rows are the last."""
    return slice(3 * prompts, 4 * prompts) if batch == 4 * prompts else None


@dataclass(frozen=True)
class PipelineQuirks:
    """How one pipeline feeds its family's denoiser differently from the family's own pipelines.

    ``encode_method``: the method that encodes the prompt (and is called again for the NAG negative);
    ``encode_returns``: the names of its returned tuple (see ``Family.encode_returns``), where they differ;
    ``rows``: (pipeline, denoiser batch, prompt rows) -> the rows to guide (None: leave that forward unguided),
    for batches that are not CFG's [uncond, cond].
    """

    encode_method: str = "encode_prompt"
    encode_returns: tuple[str, ...] | None = None
    rows: Callable[[Any, int, int], slice | None] | None = None


_BRANCHES = PipelineQuirks(rows=_branch_rows)

QUIRKS: dict[str, PipelineQuirks] = {
    "StableDiffusionPAGPipeline": _BRANCHES,
    "StableDiffusionPAGImg2ImgPipeline": _BRANCHES,
    "StableDiffusionPAGInpaintPipeline": _BRANCHES,
    "StableDiffusionControlNetPAGPipeline": _BRANCHES,
    "StableDiffusionControlNetPAGInpaintPipeline": _BRANCHES,
    "StableDiffusionXLPAGPipeline": _BRANCHES,
    "StableDiffusionXLPAGImg2ImgPipeline": _BRANCHES,
    "StableDiffusionXLPAGInpaintPipeline": _BRANCHES,
    "StableDiffusionXLControlNetPAGPipeline": _BRANCHES,
    "StableDiffusionXLControlNetPAGImg2ImgPipeline": _BRANCHES,
    **dict.fromkeys(
        (
            "AnimateDiffPipeline",
            "StableDiffusion3PAGPipeline",
            "StableDiffusion3PAGImg2ImgPipeline",
            "SanaPAGPipeline",
            "PixArtSigmaPAGPipeline",
            "AnimateDiffPAGPipeline",
            "AnimateDiffControlNetPipeline",
            "AnimateDiffSparseControlNetPipeline",
            "AnimateDiffVideoToVideoPipeline",
            "AnimateDiffVideoToVideoControlNetPipeline",
            "AnimateDiffSDXLPipeline",
            "PIAPipeline",
        ),
        _BRANCHES,
    ),
    "CycleDiffusionPipeline": PipelineQuirks(rows=_cycle_rows),
    "StableDiffusionInstructPix2PixPipeline": PipelineQuirks("_encode_prompt", ("embeds",), _pix2pix_rows),
    "StableDiffusionXLInstructPix2PixPipeline": PipelineQuirks(rows=_pix2pix_rows),
}
"""Pipeline class -> its quirks (pipelines absent here feed the denoiser as their family's pipelines do)."""

NO_QUIRKS = PipelineQuirks()


def quirks_of(pipeline_class: type) -> PipelineQuirks:
    """The quirks of a pipeline class (or of the nearest stock base class that has some)."""
    return next((QUIRKS[c.__name__] for c in pipeline_class.__mro__ if c.__name__ in QUIRKS), NO_QUIRKS)


def refusal_of(pipeline_class: type) -> str | None:
    """Why NAG refuses a pipeline class (or its nearest refused base), or None."""
    return next((REFUSED[c.__name__] for c in pipeline_class.__mro__ if c.__name__ in REFUSED), None)
