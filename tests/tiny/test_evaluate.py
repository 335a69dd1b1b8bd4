import math
from types import SimpleNamespace

import numpy as np

from nag_guidance.tiny import data
from nag_guidance.tiny.evaluate import adherence, colour_spread, generate


class RenderingPipe:
    """Stands in for a perfect model: renders what each prompt asks, open attributes drawn from the seed."""

    def __call__(self, prompts, num_inference_steps, guidance_scale, generator, output_type):
        assert output_type == "np"
        images = []
        for prompt, g in zip(prompts, generator, strict=True):
            rng = np.random.default_rng(g.initial_seed())
            images.append(data.render(data.sample_for_spec(rng, data.parse_caption(prompt))))
        return SimpleNamespace(images=np.stack(images).astype(np.float32) / 255)


def test_generate_returns_uint8_images_in_prompt_order():
    images = generate(RenderingPipe(), ["a red circle", "a blue square"], [0, 1], batch=1)
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)
    assert tuple(images[0, 16, 16]) == data.PALETTE["red"] and tuple(images[1, 16, 16]) == data.PALETTE["blue"]


def test_a_perfect_model_scores_full_adherence():
    summary, images = adherence(RenderingPipe(), seeds_per_caption=2)
    assert len(images) == summary["samples"] == 2 * len(data.held_out_captions())
    assert summary["shape_and_colour"] == summary["all"] == summary["clean"] == 1.0


def test_colour_spread_of_a_perfect_model_is_near_uniform():
    spread = colour_spread(RenderingPipe(), "a circle", samples=400)
    assert spread["off_palette"] == 0 and spread["shape_right"] == 1.0
    assert spread["entropy_bits"] > math.log2(len(data.COLOURS)) - 0.1
    narrow = colour_spread(RenderingPipe(), "a red circle", samples=50)
    assert narrow["entropy_bits"] == 0.0 and narrow["counts"]["red"] == 50
