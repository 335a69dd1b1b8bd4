"""The shipped tiny-flux weights: checksummed, small, loadable by the stock FluxPipeline, following held-out
captions."""

import shutil

import pytest
import torch
from diffusers import FluxPipeline

from nag_guidance.tiny import data
from nag_guidance.tiny.checker import check
from nag_guidance.tiny.evaluate import generate
from nag_guidance.tiny.flux_train import prompted
from nag_guidance.tiny.loading import (
    PIPELINE_DIR,
    WeightsError,
    flux_weights_path,
    load_flux_pipeline,
    load_pipeline,
    verify_weights,
)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return load_pipeline(model="tiny-flux")


def test_shipped_flux_weights_verify_and_are_small():
    verify_weights(flux_weights_path())
    total = sum(p.stat().st_size for p in flux_weights_path().rglob("*") if p.is_file())
    assert total <= 12 * 2**20


def test_stock_flux_pipeline_loads_the_shipped_folder():
    pipe = FluxPipeline.from_pretrained(flux_weights_path() / PIPELINE_DIR)
    assert pipe.vae_scale_factor == 2 and data.IMAGE_SIZE % (2 * pipe.vae_scale_factor) == 0
    config = pipe.transformer.config
    assert (config.num_layers, config.num_single_layers, config.guidance_embeds) == (2, 4, False)


def test_four_step_student_follows_held_out_captions(pipe):
    captions = data.held_out_captions()[:4]
    images = generate(prompted(pipe), [c for c, _ in captions for _ in range(2)], list(range(8)), steps=4)
    right = check(images).matches([spec for _, spec in captions for _ in range(2)])["shape_and_colour"]
    assert right.mean() >= 0.75


def test_damaged_shipped_file_is_named(tmp_path):
    root = tmp_path / "flux"
    shutil.copytree(flux_weights_path(), root)
    config = root / PIPELINE_DIR / "vae" / "config.json"
    config.write_text(config.read_text() + " ")
    with pytest.raises(WeightsError, match="vae/config.json"):
        load_flux_pipeline(path=root)
