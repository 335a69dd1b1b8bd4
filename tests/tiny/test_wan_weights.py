"""The shipped tiny-wan weights (once ``wan_train`` has exported them into the package)."""

import pytest
import torch
from diffusers import WanPipeline

from nag_guidance.tiny import video_data
from nag_guidance.tiny.loading import MANIFEST, embedded_model, load_pipeline, verify_weights, wan_weights_path

pytestmark = pytest.mark.skipif(
    not (wan_weights_path() / MANIFEST).is_file(), reason="tiny-wan weights are not shipped yet (docs/tiny-wan.md)"
)


def test_shipped_weights_verify_and_are_small():
    verify_weights(wan_weights_path())
    size = sum(p.stat().st_size for p in wan_weights_path().rglob("*") if p.is_file())
    assert size <= 12 * 2**20


def test_shipped_model_is_recognised_and_makes_its_default_clip():
    torch.set_num_threads(1)
    pipe = load_pipeline(model="tiny-wan")
    assert isinstance(pipe, WanPipeline) and embedded_model(pipe) == "tiny-wan"
    frames = pipe("a red circle moving left on a blue background", output_type="np").frames
    assert frames.shape == (1, video_data.FRAMES, 32, 32, 3)
