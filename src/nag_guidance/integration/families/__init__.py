"""One module per architecture family; importing this package registers them all."""

from nag_guidance.integration.families import flux, ltx, pixart, sd3, stable_diffusion, wan

__all__ = ["flux", "ltx", "pixart", "sd3", "stable_diffusion", "wan"]
