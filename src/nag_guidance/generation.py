"""Generation as the CLI, the web page, the evaluation and the batch runner do it: load a model, run it stock,
with CFG on the negative, or with NAG on the negative, and save PNGs that carry their parameters (video models:
animated WebPs, the parameters in their EXIF description).

Every default (steps, guidance, NAG parameters) comes from the presets table, through the model's family —
or the ``tiny`` preset for the embedded model.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import operator
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, PngImagePlugin, UnidentifiedImageError

from nag_guidance import __version__
from nag_guidance.config import NAGConfig, Preset, get_preset
from nag_guidance.files import save_png, write_atomically

EMBEDDED = "embedded"
EMBEDDED_MODELS = {EMBEDDED: "tiny", "tiny": "tiny", "tiny-flux": "tiny-flux", "tiny-wan": "tiny-wan"}
"""``--model`` names of the shipped models -> their ``tiny.load_pipeline(model=...)`` name."""
"""The model name of the few-step model shipped in the package."""

METHODS = ("stock", "cfg", "nag")
"""stock: the prompt alone; cfg: classifier-free guidance with the negative as the unconditional prompt;
nag: NAG with the negative (the model's own CFG setting unchanged)."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_CFG_SCALE = 5.0

MAX_STEPS = 1000
"""Most denoising steps a request may ask for (the schedulers' training schedules have 1000 timesteps)."""
MAX_NUM_IMAGES = 1000
"""Most images one request may ask for."""
MAX_SIDE = 4096
"""Largest image height or width."""
SIDE_MULTIPLE = 8
"""Heights and widths are multiples of this (every supported family's VAE downsamples by at least 8)."""
MAX_SEED = 2**63 - 1
"""Largest seed of any image of a request (what ``torch.Generator.manual_seed`` takes, signed)."""
MAX_FRAMES = 1001
"""Most frames a video request may ask for."""
VIDEO_FPS = 8
"""Frame rate written into animated WebPs (tiny-wan's 9 frames: about a second)."""
EXIF_DESCRIPTION = 0x010E
"""EXIF ImageDescription: where a WebP written by ``save`` keeps its parameters (as JSON)."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded (unknown id, no network and no cache, damaged files...)."""


class MetadataError(ValueError):
    """A file carries no parameters ``read_metadata`` can read (a PNG not written here, or not a PNG at all)."""


@dataclass
class Model:
    """A loaded pipeline with NAG applied, and where its defaults come from."""

    pipe: Any
    name: str
    preset_name: str
    family: str
    call_defaults: dict[str, Any] = field(default_factory=dict)  # arguments every call of this model needs

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
    num_frames: int | None = None
    scale: float | None = None
    tau: float | None = None
    alpha: float | None = None
    start: float | None = None
    end: float | None = None
    window: str | None = None
    pooled: str | None = None

    def __post_init__(self) -> None:
        check_text("prompt", self.prompt)
        if self.negative is not None:
            check_text("negative", self.negative)
        ints = {"steps": self.steps, "seed": self.seed, "num_images": self.num_images}
        ints |= {"height": self.height, "width": self.width, "num_frames": self.num_frames}
        for name, value in ints.items():
            if value is not None:
                object.__setattr__(self, name, _whole(name, value))
        for name in ("guidance", "cfg_scale"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _real(name, getattr(self, name)))
        if not 1 <= self.num_images <= MAX_NUM_IMAGES:
            raise ValueError(f"num_images={self.num_images} is invalid: allowed is 1 to {MAX_NUM_IMAGES}")
        if self.num_frames is not None and not 1 <= self.num_frames <= MAX_FRAMES:
            raise ValueError(f"num_frames={self.num_frames} is invalid: allowed is 1 to {MAX_FRAMES}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps={self.steps} is invalid: allowed is 1 to {MAX_STEPS}")
        if not 0 <= self.seed <= MAX_SEED - (self.num_images - 1):
            raise ValueError(f"seed={self.seed} is invalid: allowed is 0 to {MAX_SEED} for every image's seed")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and not (0 < value <= MAX_SIDE and value % SIDE_MULTIPLE == 0):
                raise ValueError(
                    f"{name}={value} is invalid: allowed is a multiple of {SIDE_MULTIPLE} from {SIDE_MULTIPLE} "
                    f"to {MAX_SIDE}"
                )
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance={self.guidance} is invalid: allowed is a finite number >= 0")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 1):
            raise ValueError(f"cfg_scale={self.cfg_scale} is invalid: allowed is a finite number >= 1")
        self.nag_overrides(NAGConfig())

    def nag_overrides(self, config: NAGConfig) -> NAGConfig:
        """``config`` with this request's NAG settings (validated)."""
        return config.with_overrides(
            scale=self.scale,
            tau=self.tau,
            alpha=self.alpha,
            start=self.start,
            end=self.end,
            window=self.window,
            pooled=self.pooled,
        )


def check_text(name: str, text: Any) -> str:
    """A prompt must be a string that can be written out as UTF-8: undecodable bytes of a command line arrive
    as lone surrogates (``\\udcff``), which the tokenizer and the PNG text chunks cannot take."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{name} is not valid text: undecodable byte(s) at character {error.start} (is the terminal UTF-8?)"
        ) from None
    return text


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: expected a whole number")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r} is invalid: expected a whole number") from None


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} is invalid: expected a number")
    return float(value)


def check_device(device: Any) -> str:
    """``device`` if torch can put tensors there, else a ``ValueError`` that says why (unknown name, no CUDA...)."""
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} is invalid: expected a name such as cpu, cuda, cuda:1, mps")
    try:
        parsed = torch.device(device)
    except Exception:  # torch raises RuntimeError for unknown types, other errors for odd text
        raise ValueError(f"device {device!r} is not a torch device; examples: cpu, cuda, cuda:1, mps, xpu") from None
    if parsed.type == "meta":
        raise ValueError("device 'meta' holds no data: images cannot be generated there")
    backends = {
        "cuda": lambda: torch.cuda.is_available(),
        "mps": lambda: torch.backends.mps.is_available(),
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
    }
    if parsed.type in backends and not backends[parsed.type]():
        raise ValueError(f"device {device!r} is not available: this torch ({torch.__version__}) sees no "
                         f"{parsed.type} device here (use --device cpu)")  # fmt: skip
    try:
        torch.empty(1, device=parsed)
    except Exception as error:  # e.g. cuda:7 on a machine with one GPU, a backend this torch lacks
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise ValueError(f"device {device!r} is not available: {reason or type(error).__name__}") from None
    return device


def check_output_folder(folder: Path, option: str = "--out") -> Path:
    """Create ``folder`` if needed and make sure files can be written there, before any long work; a
    ``ValueError`` says why not (a file in the way, no permission, a read-only place)."""
    folder = Path(folder)
    try:
        for place in (folder, *folder.parents):
            if place.exists():
                if not place.is_dir():
                    what = "is a file" if place == folder else f"is under {place}, which is a file"
                    raise ValueError(f"{option} {folder} {what}, not a folder")
                break
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) and str(error).startswith(option):
            raise
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(f"{option} {folder}: cannot write there ({reason})") from None
    return folder


@dataclass
class Result:
    """The images of one method, each with the metadata written into its PNG; for a video model ``videos`` holds
    the clips (lists of frames) and ``images`` their first frames."""

    method: str
    images: list[Image.Image]
    metadata: list[dict[str, Any]]
    report: Any = None
    videos: list[list[Image.Image]] | None = None


def load(model: str | None = None, device: str = "cpu", dtype: str = "float32", preset: str | None = None) -> Model:
    """Load ``model`` (None, "embedded" or "tiny": the shipped UNet model; "tiny-flux": the shipped Flux-type one;
    "tiny-wan": the shipped video model; else a diffusers model id or local folder) and apply NAG. Raises
    ``ModelLoadError`` with a readable reason instead of a traceback wall."""
    import nag_guidance as nag

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
    check_device(device)
    torch_dtype = DTYPES[dtype]
    name = model or EMBEDDED
    if name in EMBEDDED_MODELS:
        from nag_guidance import tiny

        try:
            pipe = tiny.load_pipeline(device=device, dtype=torch_dtype, model=EMBEDDED_MODELS[name])
        except tiny.WeightsError as error:
            raise ModelLoadError(str(error)) from None
    else:
        pipe = _from_pretrained(name, torch_dtype, device)
    try:
        family = nag.integration.detect(pipe)
    except NotImplementedError as error:  # a loadable pipeline that NAG does not support
        raise ModelLoadError(f"model {name!r} cannot be used: {error}") from None
    preset_name = preset or nag.integration.default_preset(pipe)  # the embedded model's is "tiny"
    get_preset(preset_name)  # validates a user-given name before any work
    nag.apply(pipe, preset=preset_name)
    call_defaults = {}
    if EMBEDDED_MODELS.get(name) == "tiny-flux":
        from nag_guidance.tiny.loading import FLUX_MAX_SEQUENCE_LENGTH

        call_defaults["max_sequence_length"] = FLUX_MAX_SEQUENCE_LENGTH  # its T5 was trained on that length
    return Model(pipe=pipe, name=name, preset_name=preset_name, family=family.name, call_defaults=call_defaults)


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
        shipped = ", ".join(EMBEDDED_MODELS)
        raise ModelLoadError(
            f"could not load model {name!r}: {hint}; the shipped models are {shipped}. "
            f"({type(error).__name__}: {error})"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run(model: Model, request: Request, method: str, progress: Callable[[int, int], None] | None = None) -> Result:
    """Generate ``request.num_images`` images (seeds seed, seed+1, ...) with one method."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    if method != "stock" and not request.negative:
        raise ValueError(f"method {method!r} needs a negative prompt")
    from nag_guidance.integration import defaults as nag_defaults

    config = request.nag_overrides(nag_defaults(model.pipe))
    _family(model).pooled_for(config)  # whatever the method: a --grid fails before its first image
    pipe, preset = model.pipe, model.preset
    steps = request.steps or preset.steps or 25
    guidance = request.guidance if request.guidance is not None else preset.guidance_scale
    video = _accepts(pipe, "num_frames")
    if request.num_frames is not None and not video:
        raise ValueError(f"num_frames is for video models; {type(pipe).__name__} makes images")
    kwargs: dict[str, Any] = {
        "prompt": request.prompt,
        "num_inference_steps": steps,
        "generator": [torch.Generator().manual_seed(request.seed + i) for i in range(request.num_images)],
        "num_videos_per_prompt" if video else "num_images_per_prompt": request.num_images,
        **model.call_defaults,
    }
    if video:
        kwargs["output_type"] = "pil"
        if request.num_frames:
            kwargs["num_frames"] = request.num_frames
    if request.height:
        kwargs["height"] = request.height
    if request.width:
        kwargs["width"] = request.width
    if guidance is None:  # record what the pipeline will use
        guidance = _default(pipe, "guidance_scale")
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    if method == "cfg":
        argument = _family(model).cfg_argument
        if argument is None:
            raise ValueError(f"{type(pipe).__name__} cannot run CFG with a negative prompt")
        kwargs[argument] = request.cfg_scale
        kwargs["negative_prompt"] = request.negative
    if method == "nag":
        kwargs["nag_negative_prompt"] = request.negative
        kwargs.update({f"nag_{name}": value for name, value in config.as_dict().items()})  # every NAGConfig field
    if progress is not None and _accepts(pipe, "callback_on_step_end"):
        kwargs["callback_on_step_end"] = _step_callback(progress, steps)
    output = pipe(**kwargs)
    videos = [list(clip) for clip in output.frames] if video else None
    images = [clip[0] for clip in videos] if videos else list(output.images)
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
    if videos:
        parameters |= {"num_frames": len(videos[0]), "fps": VIDEO_FPS}
    metadata = [{**parameters, "seed": request.seed + i} for i in range(len(images))]
    return Result(method=method, images=images, metadata=metadata, report=report, videos=videos)


def _family(model: Model):
    from nag_guidance.integration import registered_families

    return registered_families()[model.family]


def _parameters(pipe: Any) -> dict[str, Any]:
    import inspect

    from nag_guidance.integration import stock_class

    return inspect.signature(stock_class(pipe).__call__).parameters


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


def save_webp(frames: Sequence[Image.Image], target: Any, metadata: dict[str, Any] | None = None) -> None:
    """An animated, lossless WebP (exact pixels: the video checker can read it back) looping at ``VIDEO_FPS``,
    with ``metadata`` as JSON in its EXIF description."""
    exif = Image.Exif()
    if metadata is not None:
        exif[EXIF_DESCRIPTION] = json.dumps(metadata, sort_keys=True)
    first, *rest = frames
    first.save(target, format="WEBP", save_all=True, append_images=rest, duration=round(1000 / VIDEO_FPS), loop=0,
               lossless=True, exif=exif.tobytes())  # fmt: skip


def save(result: Result, folder: Path, prefix: str = "", overwrite: bool = True) -> list[Path]:
    """Write ``{prefix}{method}-{seed}.png`` files (videos: animated ``.webp``) with their metadata; returns the
    paths. With ``overwrite=False`` an existing file is never replaced: the new one gets a ``-1``, ``-2``...
    suffix. Each file is whole or absent: a full disk raises ``OSError`` and leaves no partial file (``files``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    clips = result.videos or [None] * len(result.images)
    suffix = ".webp" if result.videos else ".png"
    for image, clip, metadata in zip(result.images, clips, result.metadata, strict=True):
        stem = f"{prefix}{result.method}-{metadata['seed']:05d}"
        names = (
            [f"{stem}{suffix}"] if overwrite else (f"{stem}{f'-{n}' if n else ''}{suffix}" for n in itertools.count())
        )
        for name in names:
            path = folder / name
            if clip is not None:
                written = write_atomically(path, lambda file, c=clip, m=metadata: save_webp(c, file, m), overwrite)
            else:
                written = save_png(image, path, png_info(metadata), replace=overwrite)
            if written:
                break
        paths.append(path)
    return paths


def read_metadata(path: Path) -> dict[str, Any]:
    """The parameters a PNG (or animated WebP) written by ``save`` carries. Any other file raises
    ``MetadataError`` saying why: not a readable image, no parameters, or parameters that are not a JSON object
    (other tools write their own)."""
    try:
        with Image.open(path) as image:
            if image.format == "WEBP":
                text = image.getexif().get(EXIF_DESCRIPTION)
            else:
                text = getattr(image, "text", {}).get("parameters")  # only PNGs have text chunks
    except (UnidentifiedImageError, SyntaxError, ValueError) as error:  # not an image; a broken or oversized chunk
        raise MetadataError(f"{path} is not a readable PNG or WebP ({error})") from None
    if text is None:
        raise MetadataError(f"{path} carries no nag-guidance parameters (no 'parameters' text chunk or EXIF text)")
    try:
        parameters = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise MetadataError(f"{path}: its parameters text is not JSON (another tool's?)") from None
    if not isinstance(parameters, dict):
        raise MetadataError(f"{path}: its parameters text is JSON {type(parameters).__name__}, not an object")
    return parameters


def read_frames(path: Path) -> list[Image.Image]:
    """Every frame of an animated image (RGB)."""
    with Image.open(path) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(image.convert("RGB"))
        return frames


def video_grid(columns: dict[str, Sequence[Sequence[Image.Image]]], cell: int = 256) -> list[Image.Image]:
    """``grid`` frame by frame: one labelled column of clips per method, one row per seed."""
    count = min(len(clip) for clips in columns.values() for clip in clips)
    return [grid({name: [clip[f] for clip in clips] for name, clips in columns.items()}, cell) for f in range(count)]


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
