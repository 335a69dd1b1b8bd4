"""CLIP scores for user models, from local CLIP weights only (``nag eval --model ... --clip-model PATH``).

For a prompt/negative pair the prompt score is 100·cos(image, prompt) (the usual CLIP score) and the negative
score is 100·cos(image, negative): NAG should lower the negative score while keeping the prompt score. Loading
never touches the network: a path that is not a local CLIP checkpoint fails with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image


class ClipUnavailable(ValueError):
    """The CLIP weights could not be loaded from the given local path."""


class ClipScorer:
    def __init__(self, path: Path | str, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ClipUnavailable(f"{path} is not a local CLIP checkpoint folder (config.json missing)")
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except Exception as error:  # any loading failure means the same thing to the user
            raise ClipUnavailable(f"could not load CLIP from {path}: {type(error).__name__}: {error}") from None
        self.device = device

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """100·cos(image_i, text_i), clipped at 0 like the usual CLIP score."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} texts")
        inputs = self.processor(
            text=list(texts), images=list(images), return_tensors="pt", padding=True, truncation=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs)
        image = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        text = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return (100 * (image * text).sum(-1)).clamp_min(0).tolist()
