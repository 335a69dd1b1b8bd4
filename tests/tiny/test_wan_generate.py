import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nag_guidance import generation
from nag_guidance.cli import app
from nag_guidance.tiny import loading
from nag_guidance.tiny.video_checker import check_clips
from nag_guidance.tiny.wan_train import STAGES, main


@pytest.fixture(scope="module")
def shipped_wan(tmp_path_factory):
    """A quick tiny-wan export standing in for the package's weights folder."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny-wan")
    main(["--out", str(out), "--quick", "--export-dir", str(out / "export"), "--stages", ",".join(STAGES[:-1])])
    return out / "export"


@pytest.fixture
def as_package(shipped_wan, monkeypatch):
    monkeypatch.setattr(loading, "wan_weights_path", lambda: shipped_wan)


def test_embedded_wan_is_recognised_and_gets_the_4_step_wan_preset(as_package):
    model = generation.load("tiny-wan")
    assert loading.embedded_model(model.pipe) == "tiny-wan"
    assert model.family == "wan" and model.preset_name == loading.FALLBACK_PRESETS["tiny-wan"]


def test_generate_writes_animated_webps_with_parameters_and_a_strip(as_package, tmp_path):
    out = tmp_path / "gen"
    args = ["generate", "a red circle moving left", "--negative", "blue", "--model", "tiny-wan", "--grid"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--num-frames", "7", "--steps", "2"])
    assert result.exit_code == 0, result.output
    clip = out / "nag-00000.webp"
    metadata = generation.read_metadata(clip)
    assert metadata["prompt"] == "a red circle moving left" and metadata["method"] == "nag"
    assert metadata["num_frames"] == 7 and metadata["steps"] == 2 and metadata["model"] == "tiny-wan"
    frames = generation.read_frames(clip)
    assert len(frames) == 7 and frames[0].size == (32, 32)
    check_clips(np.stack([np.asarray(f) for f in frames])[None])  # readable as a clip
    strip = generation.read_frames(out / "grid.webp")
    assert len(strip) == 7 and strip[0].width == 3 * 256
    assert {p.name for p in out.iterdir()} == {"stock-00000.webp", "cfg-00000.webp", "nag-00000.webp", "grid.webp"}


def test_lossless_webp_round_trips_pixels(tmp_path):
    rng = np.random.default_rng(0)
    clip = [generation.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    generation.save_webp(clip, tmp_path / "c.webp", {"seed": 1})
    back = generation.read_frames(tmp_path / "c.webp")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(clip, back, strict=True))
    assert generation.read_metadata(tmp_path / "c.webp") == {"seed": 1}


def test_num_frames_is_refused_for_image_models():
    model = generation.load("tiny")
    with pytest.raises(ValueError, match="num_frames is for video models"):
        generation.run(model, generation.Request(prompt="a circle", num_frames=5), "stock")


def test_unknown_model_lists_the_three_embedded_models(tmp_path):
    result = CliRunner().invoke(app, ["generate", "a circle", "--model", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert all(name in result.output for name in ("tiny", "tiny-flux", "tiny-wan"))


def test_eval_refuses_the_video_model_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--model", "tiny-wan", "--out", str(tmp_path / "e")])
    assert result.exit_code != 0 and "tiny-wan has no eval suite yet" in result.output
