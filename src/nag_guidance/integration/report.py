"""``pipe.nag_report``: what NAG did on the last call, so users can tell whether it acted at all."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nag_guidance.config import NAGConfig
from nag_guidance.integration.state import CallInfo


@dataclass(frozen=True)
class NAGReport:
    """Summary of one pipeline call.

    ``layers_guided``: attention layers that applied NAG at least once; ``steps_guided`` of
    ``steps_total`` denoising steps; ``mean_ratio``: mean r = ‖Z~‖₁/‖Z+‖₁ over all guided tokens;
    ``clipped_fraction``: share of those tokens whose r exceeded τ. ``warnings`` say why NAG had no
    effect or only a partial one.
    """

    family: str
    config: NAGConfig | None
    layers_guided: int = 0
    steps_guided: int = 0
    steps_total: int | None = None
    mean_ratio: float | None = None
    clipped_fraction: float | None = None
    warnings: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """True when NAG changed at least one attention output."""
        return self.layers_guided > 0

    def __str__(self) -> str:
        if not self.active:
            return f"NAG ({self.family}): no effect — " + "; ".join(self.warnings)
        cfg = self.config
        text = (
            f"NAG ({self.family}) scale={cfg.scale:g} tau={cfg.tau:g} alpha={cfg.alpha:g}"
            f"{' pooled=' + cfg.pooled if cfg.pooled else ''}: "
            f"{self.layers_guided} layers, {self.steps_guided}/{self.steps_total} steps, "
            f"mean r={self.mean_ratio:.3f}, clipped {100 * self.clipped_fraction:.1f}% of tokens"
        )
        return text + "".join(f"; warning: {w}" for w in self.warnings)


def inactive_report(family: str, config: NAGConfig | None, reason: str) -> NAGReport:
    return NAGReport(family=family, config=config, warnings=(reason,))


def report_from_call(family: str, call: CallInfo) -> NAGReport:
    """Build the report; the call's host syncs happen here, after the last step (two: the ratio statistics and
    the guided timesteps)."""
    warnings = list(call.notes)
    per_layer = torch.cat([stats.cpu() for stats in call.stats.values()]) if call.stats else torch.zeros(0, 3)
    layers_guided = int((per_layer[:, 2] > 0).sum())
    if not layers_guided:
        if call.negative is None:
            warnings.append("the NAG negative was never encoded (the pipeline did not call encode_prompt)")
        elif call.num_steps is None:
            warnings.append("the denoiser was never called with NAG active")
        elif call.guided_timesteps:
            warnings.append("guided forwards ran, but no text-attention layer applied NAG")
        else:
            config = call.config
            units = "the schedule" if config.window == "schedule" else f"{call.num_steps} steps"
            warnings.append(f"no step fell in the window [{config.start:g}, {config.end:g}] of {units}")
        return NAGReport(family, call.config, steps_total=call.num_steps, warnings=tuple(warnings))
    ratio_sum, clipped, tokens = per_layer.double().sum(0).tolist()
    return NAGReport(
        family=family,
        config=call.config,
        layers_guided=layers_guided,
        steps_guided=_count_steps(call.guided_timesteps),
        steps_total=call.num_steps,
        mean_ratio=ratio_sum / tokens,
        clipped_fraction=clipped / tokens,
        warnings=tuple(warnings),
    )


def _count_steps(timesteps: list) -> int:
    """Denoising steps among the guided forwards: runs of equal timesteps count once (a single host sync). A
    timestep per frame or token counts as its largest, as in ``NAGState._advance_step``."""
    tensors = [t.amax().reshape(1).float() for t in timesteps if isinstance(t, torch.Tensor)]
    if len(tensors) == len(timesteps):
        values = torch.cat([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else []
    else:
        values = [float(t.max()) if isinstance(t, torch.Tensor) else float(t) for t in timesteps]
    return sum(1 for i, v in enumerate(values) if i == 0 or v != values[i - 1])
