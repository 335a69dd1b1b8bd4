import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from nag_guidance.tiny import video_data
from nag_guidance.tiny.loading import (
    PIPELINE_DIR,
    WAN_CALL_DEFAULTS,
    WeightsError,
    embedded_model,
    load_pipeline,
    load_wan_pipeline,
)
from nag_guidance.tiny.wan_train import STAGES, WAN_FLOW, main, trajectory_captions


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny-wan")
    main(["--out", str(out), "--quick", "--export-dir", str(out / "export"), "--stages", ",".join(STAGES[:-1])])
    return out


def test_quick_recipe_runs_every_training_stage_and_times_them(quick_run):
    times = json.loads((quick_run / "times.json").read_text())
    assert set(times) == set(STAGES[:-1])
    assert (quick_run / "export" / "manifest.json").is_file()
    reconstruction = torch.load(quick_run / "vae" / "final.pt", weights_only=True)["reconstruction"]
    assert set(reconstruction) == {"shape", "colour", "background", "motion", "all"}


def test_a_rerun_skips_finished_stages(quick_run, capsys):
    main(["--out", str(quick_run), "--quick", "--stages", "vae,latents,teacher,student"])
    assert capsys.readouterr().out.count("done already") == 4


def test_stock_wan_pipeline_loads_the_export_and_makes_clips(quick_run):
    pipe = WanPipeline.from_pretrained(quick_run / "export" / PIPELINE_DIR)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(
        ["a red circle moving left on a blue background", "a square moving"],
        height=32,
        width=32,
        num_frames=video_data.FRAMES,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert frames.shape == (2, video_data.FRAMES, 32, 32, 3) and np.isfinite(frames).all()


def test_loader_applies_the_models_defaults_and_names_a_damaged_file(quick_run, tmp_path):
    root = tmp_path / "wan"
    shutil.copytree(quick_run / "export", root)
    pipe = load_pipeline(model="tiny-wan", path=root)
    assert isinstance(pipe, WanPipeline) and type(pipe).__name__ == "WanPipeline"
    steps = []
    frames = pipe("a circle", callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw, output_type="np").frames
    assert frames.shape == (1, WAN_CALL_DEFAULTS["num_frames"], 32, 32, 3)
    assert len(steps) == WAN_CALL_DEFAULTS["num_inference_steps"] and not pipe.do_classifier_free_guidance
    assert pipe("a circle", num_frames=5, height=48, output_type="np").frames.shape == (1, 5, 48, 32, 3)
    assert embedded_model(pipe) is None  # not the package's own folder
    teacher = load_wan_pipeline(path=root, transformer="teacher")
    assert teacher.transformer.config.num_layers == pipe.transformer.config.num_layers
    weights = root / PIPELINE_DIR / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors"):
        load_wan_pipeline(path=root)


def test_trajectory_captions_are_seeded_and_the_flow_has_video_latents():
    assert trajectory_captions(4)(3, 16) == trajectory_captions(4)(3, 16) != trajectory_captions(4)(4, 16)
    assert WAN_FLOW.latent_shape == (16, 5, 16, 16)


@pytest.mark.slow
def test_quick_evaluation_writes_adherence_per_step_count(quick_run):
    main(["--out", str(quick_run), "--quick", "--export-dir", str(quick_run / "export"), "--stages", "evaluate"])
    report = json.loads((quick_run / "eval.json").read_text())
    assert {"student_1_steps", "student_2_steps", "student_4_steps"} <= set(report)
    assert 0.0 <= report["student_4_steps"]["all"] <= 1.0 and report["student_4_steps"]["samples"] == 24
