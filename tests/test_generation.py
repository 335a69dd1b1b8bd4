"""generation's checks: requests, devices, output folders, and saving without overwriting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

from nag_guidance import generation

torch.set_num_threads(1)


def test_request_rejects_what_makes_no_sense_and_keeps_the_rest():
    assert generation.Request(prompt="a", tau=math.inf).tau == math.inf  # inf τ: never clip
    assert generation.Request(prompt="a", guidance=0.0, cfg_scale=1).cfg_scale == 1.0
    request = generation.Request(prompt="a", steps=1000, height=4096, width=8, seed=generation.MAX_SEED)
    assert (request.steps, request.height, request.width) == (1000, 4096, 8)
    for bad in ({"cfg_scale": math.nan}, {"cfg_scale": math.inf}, {"guidance": math.nan}, {"guidance": -1.0},
                {"steps": 1001}, {"steps": 2.0}, {"steps": True}, {"height": -32}, {"width": 12},
                {"seed": generation.MAX_SEED, "num_images": 2}, {"num_images": 1001}, {"prompt": "a\udcffb"},
                {"negative": "\udc80"}, {"cfg_scale": "5"}):  # fmt: skip
        with pytest.raises(ValueError):
            generation.Request(**{"prompt": "a", **bad})


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "is not available"),
        ("cuda:1", "is not available"),
        ("mps", "is not available"),
        ("xpu", "is not available"),
        ("vulkan", "is not available"),
        ("foo", "is not a torch device"),
        ("", "is not a torch device"),
        ("meta", "holds no data"),
        (None, "is invalid"),
    ],
)
def test_check_device_says_why(device, message):
    if device and device.startswith("cuda") and torch.cuda.device_count() > 1:
        pytest.skip("this machine has these CUDA devices")
    with pytest.raises(ValueError, match=message):
        generation.check_device(device)


def test_check_device_accepts_cpu():
    assert generation.check_device("cpu") == "cpu" and generation.check_device("cpu:0") == "cpu:0"


def test_check_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert generation.check_output_folder(tmp_path / "new" / "deeper").is_dir()
    with pytest.raises(ValueError, match="is a file, not a folder"):
        generation.check_output_folder(tmp_path / "file")
    with pytest.raises(ValueError, match="which is a file"):
        generation.check_output_folder(tmp_path / "file" / "sub")
    if Path("/proc/self").exists():  # Linux: nothing can be created in /proc, not even by root
        with pytest.raises(ValueError, match="cannot write there"):
            generation.check_output_folder(Path("/proc/nag-out"))


def test_save_without_overwrite_never_replaces(tmp_path):
    def result(colour: str) -> generation.Result:
        return generation.Result("nag", [Image.new("RGB", (8, 8), colour)], [{"seed": 0, "colour": colour}])

    paths = [generation.save(result(c), tmp_path, prefix="same-", overwrite=False)[0] for c in ("red", "blue", "red")]
    assert [p.name for p in paths] == ["same-nag-00000.png", "same-nag-00000-1.png", "same-nag-00000-2.png"]
    assert [generation.read_metadata(p)["colour"] for p in paths] == ["red", "blue", "red"]
    generation.save(result("green"), tmp_path, prefix="same-")  # the default replaces: the CLI's rerun
    assert generation.read_metadata(paths[0])["colour"] == "green"


def _png(path: Path, **chunks: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value, zip=len(value) > 1000)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


FOREIGN = [
    pytest.param({}, "no 'parameters' text chunk", id="no chunk"),
    pytest.param({"parameters": "a cat, Negative prompt: dog, Steps: 20"}, "is not JSON", id="another tool's text"),
    pytest.param({"parameters": "[1, 2, 3]"}, "JSON list, not an object", id="a list"),
    pytest.param({"parameters": "42"}, "JSON int, not an object", id="a number"),
    pytest.param({"parameters": "null"}, "JSON NoneType, not an object", id="null"),
    pytest.param({"parameters": "[" * 100_000 + "]" * 100_000}, "is not JSON", id="deep nesting"),
]


@pytest.mark.parametrize(("chunks", "message"), FOREIGN)
def test_read_metadata_of_a_png_not_written_here_says_why(tmp_path, chunks, message):
    path = _png(tmp_path / "foreign.png", **chunks)
    with pytest.raises(generation.MetadataError, match=message) as info:
        generation.read_metadata(path)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)


def test_read_metadata_of_a_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(generation.MetadataError, match="is not a readable PNG"):
        generation.read_metadata(path)
