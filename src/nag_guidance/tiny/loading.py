"""Loading (and writing) the embedded model's weights, checked against a sha256 manifest.

Layout under ``tiny/weights/``: ``pipeline/`` is a standard ``save_pretrained`` folder (student UNet as
``unet/``) that stock ``StableDiffusionPipeline.from_pretrained`` loads; ``teacher_unet/`` is the multi-step
teacher (``UNet2DConditionModel.from_pretrained``); ``features/`` is the Fréchet feature network;
``metadata.json`` records the recipe and stage times; ``manifest.json`` holds the sha256 of every other file.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from nag_guidance.tiny.data import IMAGE_SIZE
from nag_guidance.tiny.features import FeatureNet
from nag_guidance.tiny.model import build_scheduler

DEFAULT_STEPS = 4
"""The student's default number of Euler steps (it is distilled for 1, 2 and 4)."""
DEFAULT_GUIDANCE = 0.0
"""No classifier-free guidance by default: the student is a few-step model, like the ones NAG targets."""
TEACHER_STEPS = 25
"""A sensible step count for the teacher (a plain rectified flow)."""
DEFAULT_IMAGE_SIZE = IMAGE_SIZE

MANIFEST = "manifest.json"
PIPELINE_DIR = "pipeline"
TEACHER_DIR = "teacher_unet"
FEATURES_FILE = "features/model.safetensors"
METADATA_FILE = "metadata.json"


class WeightsError(RuntimeError):
    """The shipped weights are missing or damaged (the message names the file)."""


def weights_path() -> Path:
    """Folder of the weights shipped inside the package."""
    return Path(__file__).resolve().parent / "weights"


def is_embedded(pipe: object) -> bool:
    """Whether ``pipe`` was loaded from the shipped weights folder (so it gets the ``tiny`` preset)."""
    name = getattr(pipe, "name_or_path", None)
    return bool(name) and Path(name).resolve() == weights_path() / PIPELINE_DIR


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(root: Path) -> dict[str, str]:
    """Hash every file under ``root`` (except the manifest itself) into ``root/manifest.json``."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    hashes = {p.relative_to(root).as_posix(): _sha256(p) for p in files}
    (root / MANIFEST).write_text(json.dumps({"sha256": hashes}, indent=2) + "\n")
    return hashes


def verify_weights(path: Path | None = None) -> None:
    """Raise ``WeightsError`` naming the first missing or damaged file; silent when all hashes match."""
    root = Path(path) if path is not None else weights_path()
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise WeightsError(f"{manifest} is missing: the tiny model's weights are not installed or were removed")
    try:
        hashes: dict[str, str] = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError) as error:
        raise WeightsError(f"{manifest} is damaged ({error}); reinstall the package") from error
    for name, expected in hashes.items():
        file = root / name
        if not file.is_file():
            raise WeightsError(f"weights file {file} is missing; reinstall the package or re-export the weights")
        if _sha256(file) != expected:
            raise WeightsError(
                f"weights file {file} is damaged (sha256 does not match {manifest}); reinstall the package "
                "or re-export the weights"
            )


def load_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    unet: str = "student",
    path: Path | None = None,
    verify: bool = True,
) -> StableDiffusionPipeline:
    """The embedded model as a stock ``StableDiffusionPipeline`` (no safety checker), ``unet`` = "student"
    (few-step, default) or "teacher" (many-step rectified flow, same text encoder and VAE)."""
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
    root.mkdir(parents=True, exist_ok=True)
    for stale in sorted(root.rglob("*"), reverse=True):
        if stale.is_file():
            stale.unlink()
        elif stale.is_dir():
            stale.rmdir()
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
