import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from nag_guidance.tiny import data
from nag_guidance.tiny.flux_model import build_flux_scheduler, build_t5_tokenizer, image_ids, pack, unpack
from nag_guidance.tiny.flux_train import STAGES, flux_grid, main
from nag_guidance.tiny.loading import (
    FLUX_MAX_SEQUENCE_LENGTH,
    PIPELINE_DIR,
    WeightsError,
    load_flux_pipeline,
    load_pipeline,
    write_manifest,
)
from nag_guidance.tiny.train import grid_positions


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny-flux")
    main(["--out", str(out), "--quick", "--export-dir", str(out / "export"), "--stages", ",".join(STAGES[:-1])])
    return out


def test_quick_recipe_runs_every_training_stage_and_times_them(quick_run):
    times = json.loads((quick_run / "times.json").read_text())
    assert set(times) == {"teacher", "trajectories", "student", "export"}
    assert (quick_run / "export" / "manifest.json").is_file()


def test_stock_flux_pipeline_loads_the_export_and_samples_32px(quick_run):
    pipe = FluxPipeline.from_pretrained(quick_run / "export" / PIPELINE_DIR)
    pipe.set_progress_bar_config(disable=True)
    assert not pipe.transformer.config.guidance_embeds and pipe.vae.config.shift_factor == 0.0
    images = pipe(
        ["a red circle", "a square"],
        height=data.IMAGE_SIZE,
        width=data.IMAGE_SIZE,
        num_inference_steps=2,
        max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_loader_verifies_and_names_a_damaged_file(quick_run, tmp_path):
    root = tmp_path / "flux"
    shutil.copytree(quick_run / "export", root)
    pipe = load_pipeline(model="tiny-flux", path=root)
    assert isinstance(pipe, FluxPipeline) and pipe.default_sample_size * pipe.vae_scale_factor == data.IMAGE_SIZE
    teacher = load_flux_pipeline(path=root, transformer="teacher")
    assert teacher.transformer.config.num_layers == pipe.transformer.config.num_layers
    weights = root / PIPELINE_DIR / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors"):
        load_flux_pipeline(path=root)


def test_sd_manifest_leaves_a_nested_flux_set_alone(tmp_path):
    (tmp_path / "a.txt").write_text("sd")
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "b.txt").write_text("flux")
    write_manifest(tmp_path / "flux")
    assert set(write_manifest(tmp_path)) == {"a.txt"}


def test_grids_are_the_pipelines_uniform_euler_grids():
    sigmas, timesteps = flux_grid(4)
    assert sigmas == (1.0, 0.75, 0.5, 0.25, 0.0) and timesteps == (1.0, 0.75, 0.5, 0.25)
    assert flux_grid(1)[0] == (1.0, 0.0) and flux_grid(2)[0] == (1.0, 0.5, 0.0)
    assert grid_positions(flux_grid(16)[0], sigmas[1:-1]) == [4, 8, 12]
    scheduler = build_flux_scheduler()
    assert not scheduler.config.use_dynamic_shifting and scheduler.config.shift == 1.0


def test_packing_matches_the_pipeline():
    x = torch.randn(2, 4, 16, 16)
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 4, 16, 16))
    assert torch.equal(unpack(pack(x)), x)
    assert torch.equal(image_ids(), FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32))


def test_t5_tokenizer_is_word_level_and_ends_with_eos(tmp_path):
    tokenizer = build_t5_tokenizer()
    ids = tokenizer("a red circle on a blue background").input_ids
    assert len(ids) == 8 and ids[-1] == tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    again = type(tokenizer).from_pretrained(tmp_path)
    assert again("a red circle on a blue background").input_ids == ids
    assert tokenizer("", padding="max_length", max_length=FLUX_MAX_SEQUENCE_LENGTH).input_ids[0] == 1
