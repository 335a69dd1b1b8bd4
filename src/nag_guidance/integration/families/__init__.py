"""One module per architecture family; importing this package registers them all."""

from nag_guidance.integration.families import ltx, pixart, stable_diffusion, wan

__all__ = ["ltx", "pixart", "stable_diffusion", "wan"]
