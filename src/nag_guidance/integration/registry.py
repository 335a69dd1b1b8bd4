"""The families NAG supports, and how a pipeline is matched to one.

Each architecture family is described once, in its own small module, by a ``Family``: which pipeline classes
it covers, where its denoisers live, how its ``encode_prompt`` answers, and which mechanism installs NAG. The
package ``families`` lists them all in ``FAMILIES``; ``detect`` finds the family of a pipeline instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nag_guidance.config import NAGConfig
    from nag_guidance.integration.joint_attention import JointLayout
    from nag_guidance.integration.negative_text import ExtendInputs, NegativeRows
    from nag_guidance.integration.state import NAGState

Undo = Callable[[], None]
Installer = Callable[[Any, "Family", "NAGState"], list[Undo]]
"""Installs NAG on a pipeline and returns the undo actions, in installation order."""
DenoiserHook = Callable[[Any, "Family", "NAGState"], Callable[[Any, tuple, dict], Any]]
"""Makes a family's own denoiser forward pre-hook (pipe, family, state -> hook)."""


@dataclass(frozen=True)
class Family:
    """What NAG needs to know about one architecture family.

    ``encode_returns`` names the elements of the tuple ``encode_prompt`` returns: "embeds"/"mask" (the prompt),
    "uncond"/"uncond_mask" (the pipeline's CFG negative), anything else is ignored. ``attention`` names the
    text-attention layers: the last component of their module names (e.g. "attn2") or, with a dot, an
    ``fnmatch`` pattern of the whole name. ``text_width`` lets precomputed negative embeddings be checked before
    any compute (None where the pipeline's embeddings are not what the denoiser takes). The last three fields are
    for the mechanisms: ``layout`` says where joint attention is called, ``extend_inputs`` extends what else
    depends on the text length, ``denoiser_hook`` replaces the shared pre-hook that appends the negative.
    ``pooled_arg`` names where the denoiser takes a pooled text vector (None: it takes none);
    ``negative_rows`` runs the negative branch on rows of its own, under the negative's pooled vector
    (``pooled="negative"``; None: the family offers only ``"prompt"``). ``ulysses``: whether the joint-attention
    path follows diffusers' Ulysses context parallelism on this family (``context_parallel``).
    """

    name: str
    pipelines: tuple[str, ...]
    install: Installer
    preset: str | Callable[[Any], str]
    encode_returns: tuple[str, ...]
    denoisers: tuple[str, ...] = ("transformer",)
    text_arg: str = "encoder_hidden_states"
    text_width: str | None = None  # the denoiser config key giving the width of the text embeddings it takes
    mask_arg: str | None = "encoder_attention_mask"
    timestep_arg: str = "timestep"
    timestep_units: str = "scheduler"  # how the pipeline scales the scheduler's timestep (state.TIMESTEP_UNITS)
    attention: tuple[str, ...] = ("attn2",)
    attachable: bool = True  # whether ``nag.attach`` can install it on the bare denoiser (no other components)
    cfg_cond_first: bool = False  # the pipeline batches CFG as [cond, uncond] instead of diffusers' usual order
    cfg_argument: str | None = "guidance_scale"  # the call argument that turns on CFG with ``negative_prompt``
    layout: JointLayout | None = None  # joint attention only; None: ``JointLayout()``
    extend_inputs: ExtendInputs | None = None
    denoiser_hook: DenoiserHook | None = None
    pooled_arg: str | None = None
    negative_rows: NegativeRows | None = None
    ulysses: bool = False  # joint attention: guided under diffusers' Ulysses context parallelism (tested)

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
            offered = ", ".join(f.name for f in registered_families().values() if f.negative_rows is not None)
            raise ValueError(
                f"pooled='negative' is not implemented for the {self.name} family (only pooled='prompt'); it is "
                f"for: {offered}"
            )
        return config.pooled

    def preset_for(self, pipe: Any) -> str:
        """The presets-table row for this pipeline (some families pick it from the model's config)."""
        return self.preset(pipe) if callable(self.preset) else self.preset


def registered_families() -> dict[str, Family]:
    """All families by name, in the order of ``families.FAMILIES`` (imported here: the family modules import
    this one)."""
    from nag_guidance.integration.families import FAMILIES

    known = {family.name: family for family in FAMILIES}
    if len(known) != len(FAMILIES):
        raise ValueError("two families in families.FAMILIES have the same name")
    return known


def supported_pipelines() -> dict[str, tuple[str, ...]]:
    """Family name -> the diffusers pipeline classes it covers."""
    return {name: family.pipelines for name, family in registered_families().items()}


def detect(pipe: Any) -> Family:
    """The family of a pipeline instance, matched on its class and base classes (so subclasses work).

    Raises ``NotImplementedError`` naming the class and listing what is supported.
    """
    known = registered_families()
    for cls in type(pipe).__mro__:
        for family in known.values():
            if cls.__name__ in family.pipelines:
                return family
    listing = "; ".join(f"{name}: {', '.join(pipes)}" for name, pipes in supported_pipelines().items())
    raise NotImplementedError(f"NAG does not support {type(pipe).__name__}. Supported pipelines by family — {listing}")
