"""What NAG knows of one architecture family: the ``Family`` record and the types of its fields.

Each family is described once, in its own small module under ``families/``, by a ``Family`` literal: which denoiser
classes it guides, how their pipelines' ``encode_prompt`` answers, where the text enters attention, and which of
the two mechanisms guides it (``mechanism``: "cross" for separate text-attention layers, "joint" for joint
[text; image] attention). Hard families add hooks of their own (``module_hooks``, ``pipeline_hooks``,
``pre_forward``) instead of wrapping the mechanism.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from nag_guidance.integration.state import ForwardPlan, NAGState, NegativeText

if TYPE_CHECKING:
    from nag_guidance.config import NAGConfig

Mechanism = Literal["cross", "joint"]
Undo = Callable[[], None]
PreForward = Callable[[torch.nn.Module, tuple, dict], Any]
"""A kwargs-aware forward pre-hook of the denoiser."""
ExtendInputs = Callable[[dict[str, Any], ForwardPlan, NegativeText], None]
"""Given the bound denoiser arguments (text already extended by the negative), extend in place whatever else
depends on the text length (position ids, rotary tables...)."""
ModuleHooks = Callable[[torch.nn.Module, NAGState], list[Undo]]
"""Installs a family's own hooks on the submodules of one denoiser (once per denoiser, shared by its pipelines)."""
PipelineHooks = Callable[[Any, NAGState], list[Undo]]
"""Installs a family's own hooks on pipeline components besides the denoiser (once per applied pipeline)."""


@dataclass(frozen=True)
class JointLayout:
    """Where a family's processors call attention and how the joint sequence is laid out there.

    ``function``: "dispatch" (diffusers' ``dispatch_attention_fn`` in the processor's module, tensors
    (B, S, H, D)) or "sdpa" (``torch.nn.functional.scaled_dot_product_attention``, tensors (B, H, S, D)).
    ``text_first``: whether text precedes image in the joint sequence.
    """

    function: str = "dispatch"
    text_first: bool = True


@dataclass(frozen=True)
class NegativeRows:
    """How a family runs the negative branch on batch rows of its own, under the negative's pooled vector
    (``pooled="negative"``), instead of appending the negative's tokens to the prompt rows.

    ``inputs`` re-lays the bound denoiser arguments in place (texts as rows [prompt; negative], the pooled vector
    and timestep per row) and fills the plan; ``hooks`` installs, on one denoiser, the module hooks that keep the
    image stream right under rows of two kinds, and returns their undo.
    """

    inputs: Callable[[dict[str, Any], ForwardPlan, NegativeText], None]
    hooks: Callable[[torch.nn.Module, NAGState], Undo]


@dataclass(frozen=True)
class Family:
    """What NAG needs to know about one architecture family.

    ``denoiser_classes``: the denoiser classes it guides, whatever pipeline holds them (``accepts`` tells
    families that share a class apart, SD from SDXL); ``pipelines``: the pipeline classes tested on it, matched
    first (a family with no ``denoiser_classes`` is matched by them alone). ``encode_returns`` names the elements
    of the tuple ``encode_prompt`` returns: "embeds"/"mask" (the prompt), "uncond"/"uncond_mask" (the pipeline's
    CFG negative), "pooled"; anything else is ignored. ``attention`` names the text-attention layers: the last
    component of their module names (e.g. "attn2") or, with a dot, an ``fnmatch`` pattern of the whole name.
    ``text_width``: the denoiser config keys giving the width of the text embeddings it takes (the first that is
    set), so precomputed negatives are checked before any compute. ``layout``: where joint attention is called;
    ``extend_inputs`` extends what else depends on the text length; ``pre_forward`` replaces the shared pre-hook
    that appends the negative (``(family, state) -> hook``). ``pooled_arg`` names where the denoiser takes a
    pooled text vector (None: it takes none); ``negative_rows`` runs the negative branch on rows of its own
    (``pooled="negative"``). ``ulysses``: the joint path follows diffusers' Ulysses context parallelism here.
    ``context_after_text``: tokens the model adds to the text context follow it (I2VGen-XL's image tokens)
    instead of preceding it (Wan I2V's). ``flow``: the pipelines' schedulers are flow-matching (the window rule
    of the guider door, which sees no scheduler).
    """

    name: str
    mechanism: Mechanism
    preset: str | Callable[[Any], str]
    encode_returns: tuple[str, ...]
    denoiser_classes: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    accepts: Callable[[Any], bool] | None = None
    denoisers: tuple[str, ...] = ("transformer",)
    text_arg: str = "encoder_hidden_states"
    text_width: tuple[str, ...] = ()
    mask_arg: str | None = "encoder_attention_mask"
    masks_negative: bool = False  # its own hooks read the negative's mask although the denoiser takes none
    timestep_arg: str = "timestep"
    timestep_units: str = "scheduler"  # how the pipeline scales the scheduler's timestep (state.TIMESTEP_UNITS)
    flow: bool = True
    attention: tuple[str, ...] = ("attn2",)
    context_after_text: bool = False  # cross attention: the model appends its own context tokens to the text
    cfg_cond_first: bool = False  # the pipeline batches CFG as [cond, uncond] instead of diffusers' usual order
    cfg_argument: str | None = "guidance_scale"  # the call argument that turns on CFG with ``negative_prompt``
    layout: JointLayout = JointLayout()
    extend_inputs: ExtendInputs | None = None
    pre_forward: Callable[[Family, NAGState], PreForward] | None = None
    module_hooks: ModuleHooks | None = None
    pipeline_hooks: PipelineHooks | None = None
    pooled_arg: str | None = None
    negative_rows: NegativeRows | None = None
    ulysses: bool = False

    @property
    def attachable(self) -> bool:
        """Whether ``nag.attach`` can guide a bare denoiser of this family (no hooks on other components)."""
        return self.pipeline_hooks is None

    def pooled_for(self, config: NAGConfig) -> str | None:
        """The pooled method a call with ``config`` uses here ("prompt" unless asked; None where the denoiser takes
        no pooled vector); raises ``ValueError`` for a choice the family cannot make."""
        if config.pooled is None:
            return "prompt" if self.pooled_arg else None
        if self.pooled_arg is None:
            raise ValueError(
                f"pooled={config.pooled!r}: the {self.name} denoiser takes no pooled text vector, so the negative "
                "branch's modulation is the prompt's either way; leave pooled unset"
            )
        if config.pooled == "negative" and self.negative_rows is None:
            raise ValueError(
                f"pooled='negative' is not implemented for the {self.name} family: use pooled='prompt' (see "
                "`nag families` for the families that offer 'negative')"
            )
        return config.pooled

    def takes_negative_mask(self, pooled: str | None) -> bool:
        """Whether a negative attention mask changes anything in a call with this pooled method (elsewhere it
        would be silently ignored, so it is refused)."""
        if self.mask_arg is not None or self.masks_negative:
            return True
        return pooled == "negative" and self.negative_rows is not None

    def preset_for(self, pipe: Any) -> str:
        """The presets-table row for this pipeline (some families pick it from the model's config)."""
        return self.preset(pipe) if callable(self.preset) else self.preset

    def width_of(self, denoiser: Any) -> int | None:
        """The width of the text embeddings ``denoiser`` takes, where its config says (None: unknown)."""
        config = getattr(denoiser, "config", None)
        for key in self.text_width:
            width = getattr(config, key, None)
            if isinstance(width, int):
                return width
        return None
