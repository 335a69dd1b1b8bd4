"""The guider door: NAG as a diffusers guider, for modular pipelines.

Modular pipelines hand every denoiser forward of their loop to a guider component (``prepare_inputs`` splits the
inputs into passes, ``prepare_models`` / ``cleanup_models`` bracket each pass, ``forward`` combines the
predictions). ``NormalizedAttentionGuidance`` is such a guider: CFG when ``guidance_scale > 1`` (two passes, as
``ClassifierFreeGuidance``), one pass otherwise, and NAG on the conditional pass only, through the same hooks as
``nag.attach`` (installed on the denoiser on first use, inert outside that pass).

The denoise blocks give a guider only their fixed (prompt, negative) input pairs, so the NAG negative is held by
the guider: ``encode_negative(pipe, text)`` encodes it with the pipeline's own text-encoder block (its embeddings
are exactly what the pipeline feeds the denoiser), or ``set_negative(embeds)`` takes precomputed ones::

    import torch
    from diffusers import StableDiffusionXLAutoBlocks

    from nag_guidance import NormalizedAttentionGuidance

    pipe = StableDiffusionXLAutoBlocks().init_pipeline("stabilityai/stable-diffusion-xl-base-1.0")
    pipe.load_components(torch_dtype=torch.float16)
    pipe.to("cuda")
    guider = NormalizedAttentionGuidance(guidance_scale=5.0, nag_scale=3.0, nag_alpha=0.5)
    guider.encode_negative(pipe, "glasses")
    pipe.update_components(guider=guider)
    image = pipe(prompt="a portrait of a man", num_inference_steps=25, output="images")[0]
    print(guider.report)  # what NAG did in that run: layers, steps, mean r, share clipped by tau

Beside another diffusers guider (PAG, SLG, APG, ...), give it as ``base``: its passes and its combination run
unchanged, and NAG guides its "pred_cond" pass only (never the unconditional or perturbed ones)::

    pag = PerturbedAttentionGuidance(guidance_scale=5.0, perturbed_guidance_scale=3.0, perturbed_guidance_layers=[1])
    guider = NormalizedAttentionGuidance(nag_scale=3.0, nag_alpha=0.5, base=pag)

Its config (``save_pretrained`` / ``from_pretrained``) holds the parameters, not the negative, which is per run
like a prompt, nor ``base``, which is saved on its own. NAG acts on the pipeline door's window (``nag_start`` /
``nag_stop`` as fractions of the schedule, or of the steps with ``nag_window="steps"``); ``start`` / ``stop`` gate
CFG, as in diffusers' guiders.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput, rescale_noise_cfg

from nag_guidance.config import NAGConfig, _number
from nag_guidance.integration.families import registered_families
from nag_guidance.integration.family import Family
from nag_guidance.integration.handle import NAGHandle, attach
from nag_guidance.integration.report import NAGReport, inactive_report, report_from_call
from nag_guidance.integration.state import CallInfo, NegativeText, Schedule, window_guides

if TYPE_CHECKING:
    from diffusers.modular_pipelines import BlockState, ModularPipeline

DENOISER_FAMILIES = {
    "UNet2DConditionModel": "sdxl",
    "Flux2Transformer2DModel": "flux2",
    "WanTransformer3DModel": "wan",
}
"""The family ``family=None`` picks for a denoiser class: those of diffusers' modular pipelines whose denoise loop
consults the guider and that the tests cover (SDXL, FLUX.2-Klein base, Wan 2.1). Any other attachable family is
named with ``family=`` (LTX is tested so). diffusers' Flux.1 modular pipeline never calls its guider; loops that
run each pass inside ``cache_context(identifier)`` are guided when the identifier is "pred_cond", as in LTX."""


def _checked_cfg(guidance_scale: Any, guidance_rescale: Any) -> tuple[float, float]:
    """CFG's parameters as numbers in their ranges: diffusers' guiders take anything, and a NaN or a negative scale
    would only show as a broken image (a saved config is checked the same way, ``from_config`` calls ``__init__``)."""
    guidance_scale = _number("guidance_scale", guidance_scale)
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0.0):
        raise ValueError(
            f"guidance_scale={guidance_scale} is out of range: allowed is a finite number >= 0 (CFG runs above 1)"
        )
    guidance_rescale = _number("guidance_rescale", guidance_rescale)
    if not 0.0 <= guidance_rescale <= 1.0:  # also rejects NaN; diffusers documents 0 (none) to 1 (full)
        raise ValueError(f"guidance_rescale={guidance_rescale} is out of range: allowed is 0 <= guidance_rescale <= 1")
    return guidance_scale, guidance_rescale


class NormalizedAttentionGuidance(BaseGuidance):
    """NAG (optionally with CFG) as a guider component of a diffusers modular pipeline (see the module docstring).

    nag_scale, nag_tau, nag_alpha: as ``NAGConfig`` (scale 1 = NAG off). nag_start, nag_stop, nag_window: the NAG
    window, as ``NAGConfig``'s start, end and window (all six, validated, are ``guider.nag``). guidance_scale
    (finite, ≥ 0), guidance_rescale (0 to 1), start, stop: CFG, as in ``ClassifierFreeGuidance`` (CFG runs when
    ``guidance_scale > 1``).
    family: the NAG family of the denoiser (see ``nag families``); None picks it from the denoiser's class
    (``DENOISER_FAMILIES``). base: another diffusers guider instance whose passes and combination replace this one's CFG
    (which must then keep its defaults); NAG guides its "pred_cond" pass.
    """

    _input_predictions = ["pred_cond", "pred_uncond"]
    ignore_for_config = ["base"]

    @register_to_config
    def __init__(
        self,
        nag_scale: float = 5.0,
        nag_tau: float = 2.5,
        nag_alpha: float = 0.25,
        nag_start: float = 0.0,
        nag_stop: float = 1.0,
        nag_window: str = "schedule",
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        family: str | None = None,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
        base: BaseGuidance | None = None,
    ) -> None:
        guidance_scale, guidance_rescale = _checked_cfg(guidance_scale, guidance_rescale)
        super().__init__(start, stop, enabled)
        self.nag = NAGConfig(
            scale=nag_scale, tau=nag_tau, alpha=nag_alpha, start=nag_start, end=nag_stop, window=nag_window
        )
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self._set_base(base)
        self._pass_names: list[str] = []  # the base guider's passes of the current step, in order
        families = registered_families()
        if family is not None and not (family in families and families[family].attachable):
            usable = ", ".join(name for name, spec in families.items() if spec.attachable)
            raise ValueError(f"family={family!r} cannot be guided on a bare denoiser; the guider takes: {usable}")
        self.family = family
        self._negative: NegativeText | None = None
        self._handles: dict[int, NAGHandle] = {}  # per denoiser (by identity); the hooks are the denoiser's own
        self._calls: list[tuple[NAGHandle, CallInfo]] = []  # the guided passes of the current run, for ``report``

    # -- the negative --------------------------------------------------------------------------

    def set_negative(self, negative_embeds: torch.Tensor | None, negative_mask: torch.Tensor | None = None) -> None:
        """Guide away from ``negative_embeds`` ((1 or n prompts, L, D), as the denoiser takes its text); None
        forgets the negative."""
        self._negative = None if negative_embeds is None else NegativeText(negative_embeds, negative_mask)

    def encode_negative(
        self, pipe: ModularPipeline, negative_prompt: str | list[str], **text_inputs: Any
    ) -> torch.Tensor:
        """Encode the NAG negative with ``pipe``'s own "text_encoder" block and keep it; returns the embeddings.

        ``text_inputs`` are that block's other inputs (e.g. ``max_sequence_length``): give the values the
        generation uses. The block runs as in the generation, with this guider.
        """
        if "text_encoder" not in (getattr(getattr(pipe, "blocks", None), "sub_blocks", None) or {}):  # or not modular
            raise ValueError(f"{type(pipe).__name__} has no 'text_encoder' block: use set_negative(embeds)")
        encoder = pipe.blocks.sub_blocks["text_encoder"].init_pipeline()
        components = {name: getattr(pipe, name) for name in encoder.component_names if name != "guider"}
        encoder.update_components(guider=self, **components)
        produced = {output.name for output in encoder.blocks.intermediate_outputs}
        if "prompt_attention_mask" in produced:  # padded text (LTX, ...): the mask says which tokens count
            embeds, mask = encoder(
                prompt=negative_prompt, output=["prompt_embeds", "prompt_attention_mask"], **text_inputs
            ).values()
        else:
            embeds, mask = encoder(prompt=negative_prompt, output="prompt_embeds", **text_inputs), None
        self.set_negative(embeds, mask)
        return embeds

    # -- the guider protocol -------------------------------------------------------------------

    def new(self, **kwargs: Any) -> NormalizedAttentionGuidance:
        """A copy with ``kwargs`` changed, and a copy of the base guider (which the config does not hold)."""
        base = kwargs.pop("base", None if self.base is None else self.base.new())
        guider = self.__class__.from_config(self.config, **kwargs)
        guider._set_base(base)
        return guider

    def _set_base(self, base: BaseGuidance | None) -> None:
        if base is not None and not isinstance(base, BaseGuidance):
            raise TypeError(f"base={base!r} is not a diffusers guider instance (such as PerturbedAttentionGuidance())")
        if base is not None and (self.guidance_scale, self.guidance_rescale, self._start, self._stop) != (1, 0, 0, 1):
            raise ValueError(
                "with base=..., CFG is the base guider's: leave guidance_scale, guidance_rescale, start and stop "
                "at their defaults"
            )
        if isinstance(base, NormalizedAttentionGuidance):
            raise ValueError("base= takes a guider other than NormalizedAttentionGuidance: NAG cannot wrap itself")
        self.base = base

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.Tensor) -> None:
        super().set_state(step, num_inference_steps, timestep)
        if self.base is not None:
            self.base.set_state(step, num_inference_steps, timestep)
        if step == 0:
            self._calls = []  # a new run

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[BlockState]:
        if self.base is not None:
            return self._passes(self.base.prepare_inputs(data))
        return [
            self._prepare_batch(data, i, name) for i, name in enumerate(self._input_predictions[: self.num_conditions])
        ]

    def prepare_inputs_from_block_state(
        self, data: BlockState, input_fields: dict[str, str | tuple[str, str]]
    ) -> list[BlockState]:
        if self.base is not None:
            return self._passes(self.base.prepare_inputs_from_block_state(data, input_fields))
        return [
            self._prepare_batch_from_block_state(input_fields, data, i, name)
            for i, name in enumerate(self._input_predictions[: self.num_conditions])
        ]

    def _passes(self, batches: list[BlockState]) -> list[BlockState]:
        """The base guider's batches, whose names say which pass NAG guides."""
        self._pass_names = [getattr(batch, self._identifier_key) for batch in batches]
        return batches

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        """Arm NAG for the coming forward when it is the conditional pass of a step inside the NAG window."""
        self._count_prepared += 1
        if self.base is not None:
            self.base.prepare_models(denoiser)
        if not (self._is_nag_pass() and self._enabled and self.nag.active):
            return
        if self._negative is None:
            raise RuntimeError(
                "no NAG negative: call guider.encode_negative(pipe, text) or guider.set_negative(embeds)"
            )
        handle = self._handle(denoiser)
        if not self._in_nag_window(handle.family):
            return
        if handle.active:  # a forward that raised never reached cleanup_models
            handle.finish()
        handle.begin(self._negative, config=replace(self.nag, start=0.0, end=1.0))  # the guider keeps the window

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        """Disarm NAG after the guided pass; its statistics stay on the device until ``report`` reads them."""
        handle = self._handles.get(id(getattr(denoiser, "_orig_mod", denoiser)))
        if handle is not None and handle.active:
            self._calls.append((handle, handle.finish()))
        if self.base is not None:
            self.base.cleanup_models(denoiser)

    def __call__(self, data: list[BlockState]) -> GuiderOutput:
        return self.base(data) if self.base is not None else super().__call__(data)

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        pred = pred_cond
        if self._is_cfg_enabled():
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    @property
    def is_conditional(self) -> bool:
        return self.base.is_conditional if self.base is not None else self._count_prepared == 1

    @property
    def num_conditions(self) -> int:
        if self.base is not None:
            return self.base.num_conditions
        return 2 if self._is_cfg_enabled() else 1

    def _is_nag_pass(self) -> bool:
        """Whether the coming forward is the pass NAG guides: the conditional one (the base guider's "pred_cond";
        its other conditional passes, such as PAG's perturbed "pred_cond_skip", are never guided)."""
        if self.base is None:
            return self.is_conditional
        index = self._count_prepared - 1
        return index < len(self._pass_names) and self._pass_names[index] == "pred_cond"

    # -- NAG -----------------------------------------------------------------------------------

    @property
    def report(self) -> NAGReport | None:
        """What NAG did in the last (or running) denoising run; None before any run. Reading it syncs the host."""
        if self._num_inference_steps is None:
            return None
        family = self.family or next((handle.family.name for handle, _ in self._calls), "unknown")
        if not self.nag.active:
            return inactive_report(family, self.nag, "nag_scale is 1 or nag_alpha is 0: NAG was off")
        merged = CallInfo(config=self.nag, negative=self._negative, num_steps=self._num_inference_steps)
        for _, call in self._calls:  # per-layer statistics, summed over the run
            for state, stats in call.stats.items():
                merged.stats[state] = merged.stats[state] + stats if state in merged.stats else stats
            if call.stats:
                merged.guided_timesteps.extend(call.guided_timesteps)
            merged.notes.extend(n for n in call.notes if n not in merged.notes)
        if not merged.stats and self._calls and not merged.notes:  # armed passes the hooks declined without saying why
            reason = "the denoise loop names its passes in cache_context with names NAG does not guide"
            return inactive_report(family, self.nag, f"{len(self._calls)} conditional passes ran unguided: {reason}")
        return report_from_call(family, merged)

    def remove(self) -> None:
        """Let go of the NAG hooks on every denoiser this guider ran on (they are inert between its passes); the
        denoiser is stock again once no other guider or pipeline uses them."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def _handle(self, denoiser: torch.nn.Module) -> NAGHandle:
        key = id(getattr(denoiser, "_orig_mod", denoiser))
        handle = self._handles.get(key)
        if handle is None:
            family = self.family or DENOISER_FAMILIES.get(type(denoiser).__name__)
            if family is None:
                raise ValueError(
                    f"no NAG family known for a {type(denoiser).__name__}: pass family=... (see `nag families`)"
                )
            handle = self._handles[key] = attach(denoiser, family)
        return handle

    def _in_nag_window(self, family: Family) -> bool:
        """The pipeline door's window rule (``window_guides``), on the loop's step and scheduler timestep (which
        set_state gives); the family says whether its schedulers are flow-matching or discrete."""
        if self._num_inference_steps is None:
            return True
        t = None if self._timestep is None else float(torch.as_tensor(self._timestep).max())  # per-frame: the noisiest
        inside = window_guides(self.nag, t, self._step, self._num_inference_steps, Schedule(flow=family.flow))
        return True if inside is None else inside

    def _is_cfg_enabled(self) -> bool:
        if not self._enabled or self.guidance_scale <= 1.0:
            return False
        if self._num_inference_steps is None:
            return True
        return int(self._start * self._num_inference_steps) <= self._step < int(self._stop * self._num_inference_steps)
