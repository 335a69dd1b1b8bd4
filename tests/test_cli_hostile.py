"""Hostile input to the `nag` command, class by class (bad floats, bad ints, bad paths, bad devices, bad text,
empty selections, byte-order marks): each is refused with one clear line (or click's own usage error), exit status
2, no traceback, and before any model is loaded — the table's runs replace ``generation.load`` and the evaluator
with tripwires."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from nag_guidance import batch, generation
from nag_guidance.cli import app
from nag_guidance.eval import runner as runner_module

torch.set_num_threads(1)
runner = CliRunner()

OUT, FILE, PROMPTS = "{out}", "{file}", "{prompts}"
"""Placeholders filled per test: an empty output folder, an existing plain file, a good prompts file."""

GEN = ["generate", "a circle", "-n", "red", "--steps", "1", "--out", OUT]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")


def case(arguments: list[str], message: str, *, kind: str, marks=()):
    return pytest.param(arguments, message, id=f"{kind}: {' '.join(arguments)}", marks=marks)


def generate_with(*extra: str) -> list[str]:
    return [*GEN, *extra]


FIELDS = {"--scale": "scale", "--alpha": "alpha", "--start": "start", "--end": "end", "--guidance": "guidance",
          "--cfg-scale": "cfg_scale"}  # fmt: skip

BAD_FLOATS = [
    *(case(generate_with(option, value), f"{field}={value}", kind="float")
      for option, field in FIELDS.items() for value in ("nan", "inf", "-inf")),
    *(case(generate_with("--tau", value), f"tau={value}", kind="float") for value in ("nan", "-inf", "0", "-1")),
    case(generate_with("--alpha", "1.5"), "alpha=1.5", kind="float"),
    case(generate_with("--start", "1"), "start=1.0", kind="float"),
    case(generate_with("--end", "0"), "end=0.0", kind="float"),
    case(generate_with("--cfg-scale", "0.5"), "cfg_scale=0.5", kind="float"),
    case(generate_with("--guidance", "-1"), "guidance=-1.0", kind="float"),
    case(generate_with("--scale", "lots"), "Invalid value", kind="float"),
]  # fmt: skip

BAD_INTS = [
    *(case(generate_with("--steps", v), f"steps={v}", kind="int") for v in ("0", "-1", "1001", "99999999999")),
    *(case(generate_with("--num-images", v), f"num_images={v}", kind="int") for v in ("0", "-3", "1001")),
    *(case(generate_with("--seed", v), f"seed={v}", kind="int") for v in ("-1", str(2**63), str(2**64))),
    case(generate_with("--seed", str(2**63 - 1), "--num-images", "2"), "seed=", kind="int"),
    *(case(generate_with("--height", v), f"height={v}", kind="int") for v in ("-32", "0", "33", "8192")),
    *(case(generate_with("--width", v), f"width={v}", kind="int") for v in ("-32", "4100")),
    case(generate_with("--height", "-32", "--width", "-32"), "height=-32", kind="int"),
    case(generate_with("--steps", "2.5"), "Invalid value", kind="int"),
    case(generate_with("--steps", "four"), "Invalid value", kind="int"),
    case(["ui", "--port", "0", "--out", OUT], "Invalid value", kind="int"),
    case(["ui", "--port", "70000", "--out", OUT], "Invalid value", kind="int"),
    case(["ui", "--queue-size", "0", "--out", OUT], "Invalid value", kind="int"),
    case(["eval", "--seeds", "0", "--out", OUT], "Invalid value", kind="int"),
]

BAD_PATHS = [
    case(["generate", "a circle", "--out", FILE], "is a file, not a folder", kind="path"),
    case(["generate", "a circle", "--out", FILE + "/sub"], "which is a file", kind="path"),
    case(["generate", "a circle", "--out", "/proc/nag-out"], "cannot write there", kind="path"),
    case(["generate", "--prompts", PROMPTS, "-n", "red", "--out", FILE], "is a file", kind="path"),
    case(["generate", "--prompts", OUT + "/missing.txt", "--out", OUT], "does not exist", kind="path"),
    case(["generate", "--prompts", OUT, "--out", OUT], "it is a folder", kind="path"),
    case(["ui", "--out", FILE], "is a file", kind="path"),
    case(["eval", "--quick", "--out", FILE], "is a file", kind="path"),
    case(["eval", "--quick", "--out", OUT, "--docs", FILE], "--docs", kind="path"),
    case(["bench", "--quick", "--out", FILE], "is a file", kind="path"),
    case(["bench", "--quick", "--out", OUT, "--docs", FILE + "/sub"], "which is a file", kind="path"),
]

BAD_DEVICES = [
    *(case(generate_with("--device", d), "is not available", kind="device", marks=NO_CUDA) for d in ("cuda", "cuda:1")),
    case(generate_with("--device", "mps"), "is not available", kind="device", marks=NO_MPS),
    *(case(generate_with("--device", d), "is not available", kind="device") for d in ("xpu", "vulkan")),
    *(case(generate_with("--device", d), "is not a torch device", kind="device") for d in ("foo", "", "CUDA")),
    case(generate_with("--device", "meta"), "holds no data", kind="device"),
    case(["generate", "--prompts", PROMPTS, "--out", OUT, "--device", "foo"], "not a torch", kind="device"),
    case(["ui", "--device", "nope", "--out", OUT], "is not a torch device", kind="device"),
    case(["eval", "--quick", "--device", "nope", "--out", OUT], "is not a torch device", kind="device"),
    case(["bench", "--quick", "--device", "nope", "--out", OUT], "is not a torch device", kind="device"),
]  # fmt: skip

BAD_TEXT = [
    case(["generate", "a \udcff circle", "--out", OUT], "prompt is not valid text", kind="text"),
    case(["generate", "a circle", "-n", "r\udce9d", "--out", OUT], "negative is not valid text", kind="text"),
    case(["generate", "a circle", "-n", "red", "--method", "\udcff", "--out", OUT], "is unknown", kind="text"),
]

BAD_SELECTIONS = [
    *(case(["eval", "--quick", "--kinds", k, "--out", OUT], "no kind selected", kind="selection")
      for k in (",", "", " , ,")),
    case(["eval", "--kinds", "colour,colur", "--out", OUT], "unknown kinds ['colur']", kind="selection"),
]  # fmt: skip

BAD_ADDRESSES = [
    *(case(["ui", "--host", h, "--out", OUT], f"--host {h!r} is not an address", kind="address")
      for h in ("0.0.0.0.0", "999.1.1.1", "", "exa mple", "nosuchhost.invalid")),
    case(["ui", "--host", "192.0.2.1", "--out", OUT], "--host '192.0.2.1' is not an address of this machine",
         kind="address"),  # TEST-NET-1: routable nowhere, so never a local address
]  # fmt: skip

CASES = [*BAD_FLOATS, *BAD_INTS, *BAD_PATHS, *BAD_DEVICES, *BAD_TEXT, *BAD_SELECTIONS, *BAD_ADDRESSES]


@pytest.fixture
def places(tmp_path, monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(generation, "load", tripwire)
    monkeypatch.setattr(runner_module, "Evaluator", tripwire)  # `nag eval` loads its models there
    (tmp_path / "out").mkdir()  # an existing folder is a good --out, and a bad --prompts
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "prompts.txt").write_text("a circle\n")
    return {OUT: str(tmp_path / "out"), FILE: str(tmp_path / "file"), PROMPTS: str(tmp_path / "prompts.txt")}


@pytest.mark.parametrize(("arguments", "message"), CASES)
def test_hostile_input_is_one_clear_line(places, arguments, message):
    filled = [part.replace(OUT, places[OUT]).replace(FILE, places[FILE]).replace(PROMPTS, places[PROMPTS])
              for part in arguments]  # fmt: skip
    result = runner.invoke(app, filled)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if message == "Invalid value":  # click's own usage error
        assert message in result.output, result.output
        return
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]


def test_undecodable_bytes_on_a_real_command_line(tmp_path):
    """Python hands undecodable argv bytes over as lone surrogates (surrogateescape)."""
    command = [os.fsencode(sys.executable), b"-m", b"nag_guidance", b"generate", b"un caf\xe9", b"--out",
               os.fsencode(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, timeout=300, env=env)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().startswith("error: prompt is not valid text"), stderr


def test_out_of_memory_is_one_clear_line(tmp_path, monkeypatch):
    class Loaded:
        preset = generation.get_preset("tiny")

    def run(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 800 GB")

    monkeypatch.setattr(generation, "load", lambda *a, **k: Loaded())
    monkeypatch.setattr(generation, "run", run)
    result = runner.invoke(app, ["generate", "a circle", "--steps", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "error: out of memory" in result.output, result.output


def test_other_runtime_errors_are_not_dressed_up_as_user_errors(tmp_path, monkeypatch):
    class Loaded:
        preset = generation.get_preset("tiny")

    def run(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(generation, "load", lambda *a, **k: Loaded())
    monkeypatch.setattr(generation, "run", run)
    result = runner.invoke(app, ["generate", "a circle", "--steps", "1", "--out", str(tmp_path)])
    assert isinstance(result.exception, RuntimeError)  # a real bug keeps its traceback


BOM = "\ufeff"
PROMPT_FILES = [
    pytest.param(f"{BOM}# my prompts\na circle\n", ["a circle"], id="BOM then a comment"),
    pytest.param(f"{BOM}a circle\r\n# later\r\na square\r\n", ["a circle", "a square"], id="BOM, CRLF"),
    pytest.param("# no BOM\na circle\n", ["a circle"], id="no BOM"),
    pytest.param(f"{BOM}# only a comment\n", "no prompts", id="BOM, only a comment"),
    pytest.param(f"{BOM}\n\n", "no prompts", id="BOM, blank"),
]


@pytest.mark.parametrize(("text", "expected"), PROMPT_FILES)
def test_prompts_files_with_a_byte_order_mark(tmp_path, text, expected):
    path = tmp_path / "prompts.txt"
    path.write_bytes(text.encode("utf-8"))
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            batch.read_prompts(path)
    else:
        assert batch.read_prompts(path) == expected


def test_a_bom_prompts_file_runs_only_its_prompts(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(f"{BOM}# my prompts\na circle\n".encode())
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "-n", "red", "--steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / batch.MANIFEST).read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a circle"]


def test_the_bounds_are_in_the_help():
    command = typer.main.get_command(app).commands["generate"]
    helps = {param.name: param.help or "" for param in command.params}
    assert f"1 to {generation.MAX_STEPS}" in helps["steps"]
    assert f"1 to {generation.MAX_NUM_IMAGES}" in helps["num_images"]
    for side in ("height", "width"):
        assert f"multiple of {generation.SIDE_MULTIPLE}" in helps[side] and str(generation.MAX_SIDE) in helps[side]
    assert "finite" in helps["cfg_scale"] and "finite" in helps["guidance"] and "inf" in helps["tau"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cfg_scale": float("nan")}, "cfg_scale=nan"),
        ({"scale": float("inf")}, "scale=inf"),
        ({"alpha": float("nan")}, "alpha=nan"),
        ({"end": float("-inf")}, "end=-inf"),
        ({"tau": float("nan")}, "tau=nan"),
        ({"steps": float("nan")}, "steps=nan"),
        ({"steps": None}, "steps=None"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"steps": 10**6}, "steps=1000000"),
        ({"seed": float("inf")}, "seed=inf"),
        ({"seed": 10**400}, "seed="),
        ({"scale": "5"}, "scale='5'"),
        ({"prompt": 5}, "must be text"),
        ({"negative": "\udcff"}, "not valid text"),
    ],
)
def test_web_page_values(tmp_path, values, message):
    from nag_guidance import ui

    arguments = {"prompt": "a circle", "negative": "red", "name": "embedded", "steps": 1, "seed": 0, "scale": 5.0,
                 "tau": 2.5, "alpha": 0.5, "end": 1.0, "cfg_scale": 5.0, **values}  # fmt: skip
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ui.Generator(["embedded"], tmp_path)(**arguments)


def test_a_wrong_shaped_manifest_line_is_one_warning_line_and_the_batch_resumes(tmp_path):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "out"
    prompts.write_text("a circle\na square\n")
    arguments = ["generate", "--prompts", str(prompts), "-n", "red", "--steps", "1", "--out", str(out)]
    assert runner.invoke(app, arguments).exit_code == 0
    rank = out / "manifest-rank0.jsonl"
    rank.write_text('{"index": 99}\n' + rank.read_text())
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith(f"warning: {rank}, line 1: not a record (a JSON object with a text 'key'"), lines
    assert lines[0].endswith("skipped, its item is redone if it is part of this run"), lines
    assert "2 already done" in result.output and sum("warning" in line for line in lines) == 1, result.output


def _on_a_full_disk(monkeypatch, fails=lambda image: True) -> None:
    """PNG writes of the images ``fails`` picks put half of the file down, then report a full disk, as a write to a
    full filesystem does."""
    real_save = Image.Image.save

    def save(self, fp, format=None, **params):
        if not fails(self):
            return real_save(self, fp, format=format, **params)
        data = io.BytesIO()
        real_save(self, data, format="PNG", **params)
        with contextlib.ExitStack() as stack:
            file = stack.enter_context(open(fp, "wb")) if isinstance(fp, (str, os.PathLike)) else fp
            file.write(data.getvalue()[: len(data.getvalue()) // 2])
            file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save)


EVERY_IMAGE, THE_GRID = (lambda image: True), (lambda image: image.width > 256)
FULL_DISK = [
    pytest.param(["generate", "a circle", "-n", "red", "--steps", "1"], EVERY_IMAGE, id="generate"),
    pytest.param(["generate", "a circle", "-n", "red", "--steps", "1", "--grid"], THE_GRID, id="generate --grid"),
    pytest.param(["generate", "--prompts", PROMPTS, "-n", "red", "--steps", "1"], EVERY_IMAGE, id="batch"),
]


@pytest.mark.parametrize(("arguments", "fails"), FULL_DISK)
def test_a_full_disk_is_one_error_line_and_leaves_no_partial_file(tmp_path, monkeypatch, arguments, fails):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "out"
    prompts.write_text("a circle\n")
    _on_a_full_disk(monkeypatch, fails)
    result = runner.invoke(app, [part.replace(PROMPTS, str(prompts)) for part in arguments] + ["--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {out}/"), result.output
    assert "No space left on device" in errors[0], errors
    written = sorted(p.name for p in out.rglob("*"))
    for name in written:
        assert not name.endswith(".tmp"), written
        if name.endswith(".png"):
            assert Image.open(out / name).verify() is None, f"{name} is partial"


def test_a_port_in_use_is_one_clear_line(places):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["ui", "--port", str(port), "--out", places[OUT]])
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    assert result.output.strip() == f"error: --port {port} is in use on 127.0.0.1: choose another --port"
