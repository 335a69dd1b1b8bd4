"""Loading (and writing) the embedded model's weights, checked against a sha256 manifest.

Layout under ``tiny/weights/``: ``pipeline/`` is a standard ``save_pretrained`` folder (student UNet as
``unet/``) that stock ``StableDiffusionPipeline.from_pretrained`` loads; ``teacher_unet/`` is the multi-step
teacher (``UNet2DConditionModel.from_pretrained``); ``features/`` is the Fréchet feature network;
``metadata.json`` records the recipe and stage times; ``manifest.json`` holds the sha256 of every other file.

The second model, ``tiny-flux``, lives in ``tiny/weights/flux/`` with its own manifest (the SD manifest and
export leave that folder alone): ``pipeline/`` is a stock ``FluxPipeline.from_pretrained`` folder (student
transformer as ``transformer/``), ``teacher_transformer/`` the multi-step teacher, plus ``metadata.json``.

The third, the video model ``tiny-wan``, lives in ``tiny/weights/wan/`` the same way: ``pipeline/`` is a stock
``WanPipeline.from_pretrained`` folder, ``teacher_transformer/`` its multi-step teacher.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    WanPipeline,
    WanTransformer3DModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer, UMT5EncoderModel

from nag_guidance.tiny.data import IMAGE_SIZE
from nag_guidance.tiny.features import FeatureNet
from nag_guidance.tiny.flux_model import DEFAULT_SAMPLE_SIZE, TEXT_TOKENS, build_flux_scheduler
from nag_guidance.tiny.model import build_scheduler
from nag_guidance.tiny.video_data import FRAMES

DEFAULT_STEPS = 4
"""The student's default number of Euler steps (it is distilled for 1, 2 and 4)."""
DEFAULT_GUIDANCE = 0.0
"""No classifier-free guidance by default: the student is a few-step model, like the ones NAG targets."""
TEACHER_STEPS = 25
"""A sensible step count for the teacher (a plain rectified flow)."""
DEFAULT_IMAGE_SIZE = IMAGE_SIZE

MANIFEST = "manifest.json"
SHA256 = re.compile(r"[0-9a-f]{64}")
"""A manifest's hash: a lowercase hex sha256 digest."""
PIPELINE_DIR = "pipeline"
TEACHER_DIR = "teacher_unet"
FEATURES_FILE = "features/model.safetensors"
METADATA_FILE = "metadata.json"
FLUX_DIR = "flux"
FLUX_TEACHER_DIR = "teacher_transformer"
WAN_DIR = "wan"
WAN_TEACHER_DIR = "teacher_transformer"
MODELS = ("tiny", "tiny-flux", "tiny-wan")
FALLBACK_PRESETS = {"tiny-wan": "wan-4step"}
"""The preset an embedded model gets while the presets table has no row of its own name (tiny-wan: the NAG
authors' 4-step Wan preset, not measured on it)."""
FLUX_MAX_SEQUENCE_LENGTH = TEXT_TOKENS
"""What to pass as ``max_sequence_length`` when calling the tiny-flux pipeline (it is trained with this many
T5 tokens; Flux attends to padding, so the pipeline's default of 512 gives worse images)."""


class SequenceLengthWarning(UserWarning):
    """The tiny-flux pipeline was loaded: it must be called with ``max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH``,
    which ``FluxPipeline``'s own default (512) is not (docs/tiny-flux.md measures what 512 costs)."""


_WARNED_SEQUENCE_LENGTH = False


def _warn_sequence_length_once() -> None:
    global _WARNED_SEQUENCE_LENGTH
    if not _WARNED_SEQUENCE_LENGTH:
        _WARNED_SEQUENCE_LENGTH = True
        warnings.warn(
            f"tiny-flux: call this pipeline with max_sequence_length={FLUX_MAX_SEQUENCE_LENGTH} "
            "(nag_guidance.tiny.FLUX_MAX_SEQUENCE_LENGTH), the T5 length it was trained on: at FluxPipeline's "
            "default of 512 it sees padding it never saw and largely ignores its prompt (docs/tiny-flux.md)",
            SequenceLengthWarning,
            stacklevel=3,
        )


class WeightsError(RuntimeError):
    """The shipped weights are missing or damaged (the message names the file)."""


def weights_path() -> Path:
    """Folder of the weights shipped inside the package."""
    return Path(__file__).resolve().parent / "weights"


def flux_weights_path() -> Path:
    """Folder of the shipped tiny-flux weights."""
    return weights_path() / FLUX_DIR


def wan_weights_path() -> Path:
    """Folder of the shipped tiny-wan weights."""
    return weights_path() / WAN_DIR


def embedded_model(pipe: object) -> str | None:
    """Which shipped model ``pipe`` was loaded from ("tiny", "tiny-flux", "tiny-wan"; None: another folder).
    Each gets the preset of its name."""
    name = getattr(pipe, "name_or_path", None)
    if not name:
        return None
    folder = Path(name).resolve()
    folders = {
        weights_path() / PIPELINE_DIR: "tiny",
        flux_weights_path() / PIPELINE_DIR: "tiny-flux",
        wan_weights_path() / PIPELINE_DIR: "tiny-wan",
    }
    return folders.get(folder)


def is_embedded(pipe: object) -> bool:
    """Whether ``pipe`` was loaded from the shipped weights folder of the first model (the ``tiny`` preset)."""
    return embedded_model(pipe) == "tiny"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _own_files(root: Path) -> list[Path]:
    """Files under ``root`` except its manifest and anything in a nested weights set (a sub-folder with its own
    manifest, such as ``flux/`` inside the SD weights)."""
    nested = [d for d in root.rglob("*") if d.is_dir() and (d / MANIFEST).is_file()]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p != root / MANIFEST and not any(d in p.parents or p == d for d in nested)
    )


def _clear(root: Path) -> None:
    """Remove the weights set under ``root`` (nested sets stay), creating ``root`` if needed."""
    root.mkdir(parents=True, exist_ok=True)
    for file in _own_files(root) + [root / MANIFEST]:
        file.unlink(missing_ok=True)
    for folder in sorted((d for d in root.rglob("*") if d.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def write_manifest(root: Path) -> dict[str, str]:
    """Hash every file under ``root`` (except the manifest itself and nested weights sets) into
    ``root/manifest.json``."""
    files = _own_files(root)
    hashes = {p.relative_to(root).as_posix(): _sha256(p) for p in files}
    (root / MANIFEST).write_text(json.dumps({"sha256": hashes}, indent=2) + "\n")
    return hashes


def _read_manifest(root: Path) -> dict[str, str]:
    """The manifest's file -> sha256 table, checked for its shape: ``{"sha256": {relative path: 64 hex digits}}``,
    every path a file inside ``root``; anything else is a ``WeightsError``, never a TypeError from a bad edit."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise WeightsError(f"{manifest} is missing: the tiny model's weights are not installed or were removed")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # not JSON (or not UTF-8), or absurdly deep
        raise WeightsError(f"{manifest} is damaged ({type(error).__name__}); reinstall the package") from None
    hashes = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(hashes, dict):
        raise WeightsError(
            f'{manifest} is damaged: expected an object {{"sha256": {{file: sha256, ...}}}}; reinstall the package'
        )
    inside = root.resolve()
    for name, digest in hashes.items():
        if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
            raise WeightsError(f"{manifest} is damaged: the sha256 of {name!r} is {digest!r}, not 64 hex digits")
        target = (root / name).resolve()
        if target == inside or not target.is_relative_to(inside):
            raise WeightsError(f"{manifest} is damaged: {name!r} is not a file inside {root}")
    return hashes


def verify_weights(path: Path | None = None) -> None:
    """Raise ``WeightsError`` naming the first missing, damaged or unlisted file (one the manifest does not cover
    could be loaded unchecked), or a manifest of the wrong shape; silent when all hashes match."""
    root = Path(path) if path is not None else weights_path()
    hashes = _read_manifest(root)
    unlisted = [p for p in _own_files(root) if p.relative_to(root).as_posix() not in hashes]
    if unlisted:
        raise WeightsError(
            f"weights file {unlisted[0]} is not in {root / MANIFEST} (added since?); remove it, reinstall the "
            "package or re-export the weights"
        )
    for name, expected in hashes.items():
        file = root / name
        if not file.is_file():
            raise WeightsError(f"weights file {file} is missing; reinstall the package or re-export the weights")
        if _sha256(file) != expected:
            raise WeightsError(
                f"weights file {file} is damaged (sha256 does not match {root / MANIFEST}); reinstall the package "
                "or re-export the weights"
            )


def load_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    unet: str = "student",
    path: Path | None = None,
    verify: bool = True,
    model: str = "tiny",
) -> StableDiffusionPipeline | FluxPipeline | WanPipeline:
    """The embedded model as a stock ``StableDiffusionPipeline`` (no safety checker), ``unet`` = "student"
    (few-step, default) or "teacher" (many-step rectified flow, same text encoder and VAE).

    ``model="tiny-flux"`` gives the second embedded model instead (``load_flux_pipeline``; ``unet`` then picks
    its student or teacher transformer; ``"tiny-wan"``: the video model, ``load_wan_pipeline``)."""
    if model not in MODELS:
        raise ValueError(f"model={model!r} is unknown; allowed: {', '.join(MODELS)}")
    if model == "tiny-flux":
        return load_flux_pipeline(device, dtype, unet, path, verify)
    if model == "tiny-wan":
        return load_wan_pipeline(device, dtype, unet, path, verify)
    if unet not in ("student", "teacher"):
        raise ValueError(f"unet={unet!r} is unknown; allowed: student, teacher")
    root = Path(path) if path is not None else weights_path()
    if verify:
        verify_weights(root)
    components = {}
    if unet == "teacher":
        components["unet"] = load_teacher_unet(root, dtype=dtype, verify=False)
    pipe = StableDiffusionPipeline.from_pretrained(
        root / PIPELINE_DIR,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=dtype,
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_flux_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    transformer: str = "student",
    path: Path | None = None,
    verify: bool = True,
) -> FluxPipeline:
    """The tiny-flux model as a stock ``FluxPipeline``, ``transformer`` = "student" (1–4 steps, default) or
    "teacher" (many-step rectified flow). ``default_sample_size`` is set so that height and width default to
    32 px; call it with ``max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH``."""
    if transformer not in ("student", "teacher"):
        raise ValueError(f"transformer={transformer!r} is unknown; allowed: student, teacher")
    root = Path(path) if path is not None else flux_weights_path()
    if verify:
        verify_weights(root)
    components = {}
    if transformer == "teacher":
        components["transformer"] = FluxTransformer2DModel.from_pretrained(root / FLUX_TEACHER_DIR, dtype=dtype)
    pipe = FluxPipeline.from_pretrained(root / PIPELINE_DIR, dtype=dtype, **components)
    pipe.default_sample_size = DEFAULT_SAMPLE_SIZE
    pipe.set_progress_bar_config(disable=True)
    _warn_sequence_length_once()
    return pipe.to(device)


def write_flux_weights(
    root: Path,
    tokenizers: tuple[CLIPTokenizer, T5Tokenizer],
    text_encoders: tuple[CLIPTextModel, T5EncoderModel],
    vae: AutoencoderKL,
    student: FluxTransformer2DModel,
    teacher: FluxTransformer2DModel,
    metadata: dict,
) -> None:
    """Write the tiny-flux weights folder and its manifest, replacing what was there (fp16 transformers and VAE,
    fp32 text encoders, for the reason given in ``write_weights``)."""
    _clear(root)
    half = torch.float16
    vae = copy_as(vae, half)
    vae.register_to_config(shift_factor=0.0)
    pipe = FluxPipeline(
        scheduler=build_flux_scheduler(),
        vae=vae,
        text_encoder=copy_as(text_encoders[0], torch.float32),
        tokenizer=tokenizers[0],
        text_encoder_2=copy_as(text_encoders[1], torch.float32),
        tokenizer_2=tokenizers[1],
        transformer=copy_as(student, half),
    )
    pipe.save_pretrained(root / PIPELINE_DIR)
    copy_as(teacher, half).save_pretrained(root / FLUX_TEACHER_DIR)
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    write_manifest(root)


WAN_CALL_DEFAULTS: dict[str, Any] = {
    "height": IMAGE_SIZE,
    "width": IMAGE_SIZE,
    "num_frames": FRAMES,
    "num_inference_steps": DEFAULT_STEPS,
    "guidance_scale": DEFAULT_GUIDANCE,
}
"""What ``load_wan_pipeline``'s pipeline uses for the arguments the caller leaves out: WanPipeline's own defaults
(480×832, 81 frames, 50 steps, CFG 5) are those of the 14B model, and it has no attribute that sets them."""


def with_call_defaults(pipe: DiffusionPipeline, defaults: dict[str, Any]) -> DiffusionPipeline:
    """``pipe`` with other defaults for some ``__call__`` arguments, given ones still winning. The pipeline's class
    becomes a subclass of the same name (like ``nag.apply``'s), so ``isinstance`` and family detection still
    see the stock class, and ``inspect.signature`` shows the stock signature with these defaults."""
    base = type(pipe)

    @functools.wraps(base.__call__)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        return base.__call__(self, *args, **{**defaults, **kwargs})

    signature = inspect.signature(base.__call__)
    parameters = [p.replace(default=defaults.get(name, p.default)) for name, p in signature.parameters.items()]
    __call__.__signature__ = signature.replace(parameters=parameters)
    pipe.__class__ = type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__})
    return pipe


def load_wan_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    transformer: str = "student",
    path: Path | None = None,
    verify: bool = True,
) -> WanPipeline:
    """The tiny-wan video model as a stock ``WanPipeline``, ``transformer`` = "student" (1–4 steps, default) or
    "teacher" (many-step rectified flow). Called without them, it makes 32×32 clips of 9 frames in 4 steps
    without CFG (``WAN_CALL_DEFAULTS``); it was trained on the pipeline's default ``max_sequence_length``."""
    if transformer not in ("student", "teacher"):
        raise ValueError(f"transformer={transformer!r} is unknown; allowed: student, teacher")
    root = Path(path) if path is not None else wan_weights_path()
    if path is None and not (root / MANIFEST).exists():
        raise WeightsError(
            "tiny-wan's weights are not shipped yet: its training run has not finished (docs/tiny-wan.md says how "
            "to train them: python -m nag_guidance.tiny.wan_train --out runs/tiny-wan)"
        )
    if verify:
        verify_weights(root)
    components = {}
    if transformer == "teacher":
        components["transformer"] = WanTransformer3DModel.from_pretrained(root / WAN_TEACHER_DIR, dtype=dtype)
    pipe = WanPipeline.from_pretrained(root / PIPELINE_DIR, dtype=dtype, **components)
    pipe.set_progress_bar_config(disable=True)
    defaults = dict(WAN_CALL_DEFAULTS)
    if transformer == "teacher":
        defaults["num_inference_steps"] = TEACHER_STEPS
    return with_call_defaults(pipe.to(device), defaults)


def write_wan_weights(
    root: Path,
    tokenizer: T5Tokenizer,
    text_encoder: UMT5EncoderModel,
    vae: torch.nn.Module,
    student: WanTransformer3DModel,
    teacher: WanTransformer3DModel,
    metadata: dict,
) -> None:
    """Write the tiny-wan weights folder and its manifest, replacing what was there (fp16 transformers and VAE,
    fp32 text encoder, for the reason given in ``write_weights``)."""
    _clear(root)
    half = torch.float16
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=copy_as(text_encoder, torch.float32),
        vae=copy_as(vae, half),
        scheduler=build_scheduler(),
        transformer=copy_as(student, half),
    )
    pipe.save_pretrained(root / PIPELINE_DIR)
    copy_as(teacher, half).save_pretrained(root / WAN_TEACHER_DIR)
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    write_manifest(root)


def load_teacher_unet(
    path: Path | None = None, dtype: torch.dtype = torch.float32, verify: bool = True
) -> UNet2DConditionModel:
    """The teacher UNet (``UNet2DConditionModel``)."""
    root = Path(path) if path is not None else weights_path()
    if verify:
        verify_weights(root)
    return UNet2DConditionModel.from_pretrained(root / TEACHER_DIR, dtype=dtype)


def load_feature_net(path: Path | None = None, verify: bool = True) -> FeatureNet:
    """The Fréchet feature network, in eval mode, float32 on CPU."""
    root = Path(path) if path is not None else weights_path()
    if verify:
        verify_weights(root)
    net = FeatureNet()
    net.load_state_dict({k: v.float() for k, v in load_file(root / FEATURES_FILE).items()})
    return net.eval()


def write_weights(
    root: Path,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    student: UNet2DConditionModel,
    teacher: UNet2DConditionModel,
    features: FeatureNet,
    metadata: dict,
) -> None:
    """Write the weights folder and its manifest, replacing what was there.

    Diffusers models and the feature network are stored in fp16 (loading upcasts them to fp32); the text
    encoder stays fp32 because transformers would load it as stored, and stock ``from_pretrained`` without a
    dtype would then pair an fp16 text encoder with an fp32 UNet.
    """
    _clear(root)
    half = torch.float16
    pipe = StableDiffusionPipeline(
        vae=copy_as(vae, half),
        text_encoder=copy_as(text_encoder, torch.float32),
        tokenizer=tokenizer,
        unet=copy_as(student, half),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / PIPELINE_DIR)
    copy_as(teacher, half).save_pretrained(root / TEACHER_DIR)
    (root / FEATURES_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(half).contiguous() for k, v in features.state_dict().items()}, root / FEATURES_FILE)
    (root / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    write_manifest(root)


def copy_as(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``module`` in ``dtype`` (the original keeps its precision)."""
    return copy.deepcopy(module).to(dtype)
