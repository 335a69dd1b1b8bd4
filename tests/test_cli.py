"""The `nag` command: the main job on the embedded model, PNG metadata, and clear errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from nag_guidance import __version__
from nag_guidance.cli import app
from nag_guidance.config import presets_markdown
from nag_guidance.generation import read_metadata

runner = CliRunner()


def test_generate_grid_writes_pngs_with_their_parameters(tmp_path):
    result = runner.invoke(
        app,
        ["generate", "a circle on a white background", "--negative", "red", "--steps", "2", "--num-images", "2",
         "--seed", "3", "--out", str(tmp_path), "--grid"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == sorted([*(f"{m}-0000{s}.png" for m in ("stock", "cfg", "nag") for s in (3, 4)), "grid.png"])
    meta = read_metadata(tmp_path / "nag-00004.png")
    assert meta["prompt"] == "a circle on a white background" and meta["negative"] == "red"
    assert meta["method"] == "nag" and meta["seed"] == 4 and meta["steps"] == 2 and meta["model"] == "embedded"
    assert meta["nag"]["scale"] > 1 and meta["preset"] == "tiny"
    assert read_metadata(tmp_path / "stock-00003.png")["negative"] is None
    with Image.open(tmp_path / "cfg-00003.png") as image:
        assert image.text["method"] == "cfg" and image.text["cfg_scale"] == "5.0"
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width == 3 * 256  # stock | CFG | NAG


def test_tiny_flux_with_the_negatives_pooled_vector(tmp_path):
    arguments = ["generate", "a circle", "-n", "red", "--model", "tiny-flux", "--steps", "1", "--pooled", "negative"]
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "nag-00000.png")
    assert meta["model"] == "tiny-flux" and meta["nag"]["pooled"] == "negative"


def test_same_seed_same_image(tmp_path):
    for folder in ("a", "b"):
        result = runner.invoke(
            app, ["generate", "a square", "-n", "blue", "--steps", "1", "--out", str(tmp_path / folder)]
        )
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "nag-00000.png").read_bytes() == (tmp_path / "b" / "nag-00000.png").read_bytes()


def test_user_errors_are_one_clear_line(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unsupported = tmp_path / "ddpm"  # a loadable diffusers pipeline without text attention
    unet = UNet2DModel(
        sample_size=8, block_out_channels=(8,), down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
        layers_per_block=1, norm_num_groups=8,
    )  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(unsupported)
    cases = [
        (["generate", "a circle", "--model", str(unsupported), "--out", str(tmp_path)], "DDPMPipeline"),
        (["generate", "a circle", "--method", "nag", "--out", str(tmp_path)], "need --negative"),
        (["generate", "a circle", "-n", "red", "--scale", "0.5", "--out", str(tmp_path)], "scale=0.5"),
        (
            ["generate", "a circle", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path)],
            "could not load model",
        ),
        (
            ["generate", "a circle", "--model", "tiny-fluxx", "--out", str(tmp_path)],
            "the shipped models are embedded, tiny, tiny-flux",
        ),
        (["generate", "--out", str(tmp_path)], "give a prompt"),
        (
            ["generate", "a circle", "-n", "red", "--pooled", "negative", "--grid", "--out", str(tmp_path)],
            "the sd denoiser takes no pooled text vector",
        ),
        (["generate", "a circle", "-n", "red", "--pooled", "both", "--out", str(tmp_path)], "pooled='both' is invalid"),
        (["generate", "a circle", "--dtype", "float8", "--out", str(tmp_path)], "dtype='float8' is unknown"),
        (["ui", "--dtype", "float8", "--out", str(tmp_path / "ui")], "dtype='float8' is unknown"),
    ]
    for arguments, message in cases:
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2, (arguments, result.output)
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output


def test_info_commands():
    assert runner.invoke(app, ["version"]).output.strip() == __version__
    assert runner.invoke(app, ["presets"]).output.strip() == presets_markdown()
    families = runner.invoke(app, ["families"]).output
    assert "flux: FluxPipeline" in families and "sd: StableDiffusionPipeline" in families


MAIN_JOB = ["generate", "a orange shape", "--negative", "square", "--steps", "4", "--num-images", "4",
            "--seed", "0", "--grid"]  # fmt: skip
"""The README's main job."""


def _main_job(out, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}  # tests may have set them
    command = [sys.executable, "-m", "nag_guidance", *MAIN_JOB, "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**clean, **env})


@pytest.mark.slow
def test_the_main_job_prints_only_its_own_lines(tmp_path):
    result = _main_job(tmp_path / "out", OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    for noise in ("Loading pipeline components", "Loading weights", "torchvision", "it/s]", "Warning"):
        assert noise not in output, output
    assert "wrote 13 file(s)" in output and "NAG (sd)" in output
    if importlib.util.find_spec("torchvision") is None:  # the noise is there to be silenced: a user asking sees it
        loud = _main_job(tmp_path / "loud", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="warning")
        assert loud.returncode == 0 and "torchvision" in loud.stderr, loud.stderr[-2000:]
