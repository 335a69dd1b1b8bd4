"""One module per architecture family; importing this package registers them all."""

from nag_guidance.integration.families import chroma, flux, ltx, pixart, qwen_image, sd3, stable_diffusion, wan

__all__ = ["chroma", "flux", "ltx", "pixart", "qwen_image", "sd3", "stable_diffusion", "wan"]
