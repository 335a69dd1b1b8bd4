"""Generation as the CLI, the web page, the evaluation and the batch runner do it: load a model, run it stock,
with CFG on the negative, or with NAG on the negative, and save PNGs that carry their parameters.

Every default (steps, guidance, NAG parameters) comes from the presets table, through the model's family —
or the ``tiny`` preset for the embedded model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, PngImagePlugin

from nag_guidance import __version__
from nag_guidance.config import NAGConfig, Preset, get_preset

EMBEDDED = "embedded"
"""The model name of the few-step model shipped in the package."""

METHODS = ("stock", "cfg", "nag")
"""stock: the prompt alone; cfg: classifier-free guidance with the negative as the unconditional prompt;
nag: NAG with the negative (the model's own CFG setting unchanged)."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_CFG_SCALE = 5.0


class ModelLoadError(RuntimeError):
    """A model could not be loaded (unknown id, no network and no cache, damaged files...)."""


@dataclass
class Model:
    """A loaded pipeline with NAG applied, and where its defaults come from."""

    pipe: Any
    name: str
    preset_name: str
    family: str

    @property
    def preset(self) -> Preset:
        return get_preset(self.preset_name)


@dataclass(frozen=True)
class Request:
    """One generation request; None means "the model's default" (from its preset)."""

    prompt: str
    negative: str | None = None
    steps: int | None = None
    guidance: float | None = None
    cfg_scale: float = DEFAULT_CFG_SCALE
    seed: int = 0
    num_images: int = 1
    height: int | None = None
    width: int | None = None
    scale: float | None = None
    tau: float | None = None
    alpha: float | None = None
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if self.num_images < 1:
            raise ValueError(f"num_images={self.num_images} is invalid: at least 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps} is invalid: at least 1")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} is invalid: must be >= 0")
        if self.cfg_scale < 1:
            raise ValueError(f"cfg_scale={self.cfg_scale} is invalid: must be >= 1")
        NAGConfig().with_overrides(scale=self.scale, tau=self.tau, alpha=self.alpha, start=self.start, end=self.end)


@dataclass
class Result:
    """The images of one method, each with the metadata written into its PNG."""

    method: str
    images: list[Image.Image]
    metadata: list[dict[str, Any]]
    report: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def load(model: str | None = None, device: str = "cpu", dtype: str = "float32", preset: str | None = None) -> Model:
    """Load ``model`` (None or "embedded": the shipped model; else a diffusers model id or local folder) and
    apply NAG. Raises ``ModelLoadError`` with a readable reason instead of a traceback wall."""
    import nag_guidance as nag

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    name = model or EMBEDDED
    if name == EMBEDDED:
        from nag_guidance import tiny

        try:
            pipe = tiny.load_pipeline(device=device, dtype=torch_dtype)
        except tiny.WeightsError as error:
            raise ModelLoadError(str(error)) from None
    else:
        pipe = _from_pretrained(name, torch_dtype, device)
    try:
        family = nag.integration.detect(pipe)
    except NotImplementedError as error:  # a loadable pipeline that NAG does not support
        raise ModelLoadError(f"model {name!r} cannot be used: {error}") from None
    preset_name = preset or family.preset_for(pipe)  # the embedded model's is "tiny"
    get_preset(preset_name)  # validates a user-given name before any work
    nag.apply(pipe, preset=preset_name)
    return Model(pipe=pipe, name=name, preset_name=preset_name, family=family.name)


def _from_pretrained(name: str, dtype: torch.dtype, device: str) -> Any:
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype)
    except Exception as error:  # hub, network, cache and file errors all mean the same thing to a user here
        local = Path(name).exists()
        hint = (
            "the folder is not a diffusers pipeline (model_index.json missing or damaged)"
            if local
            else "not a local folder, and the Hugging Face Hub could not provide it "
            "(check the id, your network, or HF_HUB_OFFLINE and the local cache)"
        )
        raise ModelLoadError(f"could not load model {name!r}: {hint}. ({type(error).__name__}: {error})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run(model: Model, request: Request, method: str, progress: Callable[[int, int], None] | None = None) -> Result:
    """Generate ``request.num_images`` images (seeds seed, seed+1, ...) with one method."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    if method != "stock" and not request.negative:
        raise ValueError(f"method {method!r} needs a negative prompt")
    pipe, preset = model.pipe, model.preset
    steps = request.steps or preset.steps or 25
    guidance = request.guidance if request.guidance is not None else preset.guidance_scale
    kwargs: dict[str, Any] = {
        "prompt": request.prompt,
        "num_inference_steps": steps,
        "generator": [torch.Generator().manual_seed(request.seed + i) for i in range(request.num_images)],
        "num_images_per_prompt": request.num_images,
    }
    if request.height:
        kwargs["height"] = request.height
    if request.width:
        kwargs["width"] = request.width
    if guidance is None:  # record what the pipeline will use
        guidance = _default(pipe, "guidance_scale")
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    config = model.pipe._nag_session.defaults.with_overrides(
        scale=request.scale, tau=request.tau, alpha=request.alpha, start=request.start, end=request.end
    )
    if method == "cfg":
        argument = _family(model).cfg_argument
        if argument is None:
            raise ValueError(f"{type(pipe).__name__} cannot run CFG with a negative prompt")
        kwargs[argument] = request.cfg_scale
        kwargs["negative_prompt"] = request.negative
    if method == "nag":
        kwargs.update(
            nag_negative_prompt=request.negative,
            nag_scale=config.scale,
            nag_tau=config.tau,
            nag_alpha=config.alpha,
            nag_start=config.start,
            nag_end=config.end,
        )
    if progress is not None and _accepts(pipe, "callback_on_step_end"):
        kwargs["callback_on_step_end"] = _step_callback(progress, steps)
    images = pipe(**kwargs).images
    report = pipe.nag_report if method == "nag" else None
    parameters = {
        "prompt": request.prompt,
        "negative": request.negative if method != "stock" else None,
        "method": method,
        "model": model.name,
        "steps": steps,
        "guidance_scale": kwargs.get("guidance_scale"),
        "cfg_scale": request.cfg_scale if method == "cfg" else None,
        "nag": config.as_dict() if method == "nag" else None,
        "preset": model.preset_name if method == "nag" else None,
        "height": images[0].height,
        "width": images[0].width,
        "nag_guidance_version": __version__,
    }
    metadata = [{**parameters, "seed": request.seed + i} for i in range(len(images))]
    return Result(method=method, images=list(images), metadata=metadata, report=report)


def _family(model: Model):
    from nag_guidance.integration import registered_families

    return registered_families()[model.family]


def _parameters(pipe: Any) -> dict[str, Any]:
    import inspect

    return inspect.signature(pipe._nag_session.base_class.__call__).parameters


def _accepts(pipe: Any, argument: str) -> bool:
    return argument in _parameters(pipe)


def _default(pipe: Any, argument: str) -> Any:
    parameter = _parameters(pipe).get(argument)
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _step_callback(progress: Callable[[int, int], None], steps: int):
    def callback(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        progress(step + 1, steps)
        return tensors

    return callback


def png_info(metadata: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """PNG text chunks: every parameter under its own key (readable by common tools) plus all of them as JSON
    under "parameters"."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        if value is not None:
            info.add_text(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    info.add_text("parameters", json.dumps(metadata, sort_keys=True))
    return info


def save(result: Result, folder: Path, prefix: str = "") -> list[Path]:
    """Write ``{prefix}{method}-{seed}.png`` files with their metadata; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, metadata in zip(result.images, result.metadata, strict=True):
        path = folder / f"{prefix}{result.method}-{metadata['seed']:05d}.png"
        image.save(path, pnginfo=png_info(metadata))
        paths.append(path)
    return paths


def read_metadata(path: Path) -> dict[str, Any]:
    """The parameters a PNG written by ``save`` carries."""
    with Image.open(path) as image:
        return json.loads(image.text["parameters"])


def grid(columns: dict[str, Sequence[Image.Image]], cell: int = 256, label_height: int = 20) -> Image.Image:
    """Side-by-side grid: one labelled column per method, one row per seed; small images are upscaled with
    nearest-neighbour so that pixels stay visible."""
    names = list(columns)
    rows = max(len(images) for images in columns.values())
    canvas = Image.new("RGB", (cell * len(names), label_height + cell * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for col, name in enumerate(names):
        draw.text((col * cell + 6, 4), name, fill="black")
        for row, image in enumerate(columns[name]):
            scale = min(cell / image.width, cell / image.height)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
            canvas.paste(image.resize(size, resample), (col * cell, label_height + row * cell))
    return canvas
