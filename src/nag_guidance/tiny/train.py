"""Training recipe of the embedded model, one command: ``python -m nag_guidance.tiny.train --out runs/tiny``.

Stages, each resumable (a rerun skips finished stages and continues an interrupted one from its last checkpoint):

1. ``vae``: the ``AutoencoderKL`` (32×32 pixels ↔ 16×16×4 latents); its latent scale is measured afterwards.
2. ``decoder``: the decoder alone sharpened on noise-perturbed latents (encoder frozen, so latents stay put).
3. ``teacher``: text encoder + UNet trained jointly as a rectified flow (v = ε − x0 at x_σ = (1−σ)x0 + σε, UNet
   timestep 1000·σ), with the data's empty captions as caption dropout so classifier-free guidance works.
4. ``trajectories``: the teacher's ODE run from fresh noise on the scheduler's 16-step grid, keeping the noise,
   the endpoint and the states on the 4-step grid: a fixed noise → image coupling to distil.
5. ``student``: the few-step UNet, initialised from the teacher and trained to predict the coupled endpoint from
   states on the uniform 1/2/4-step grid. States are the teacher's own, the straight line between noise and
   endpoint (where a perfect student's Euler steps land) and the student's own rollouts (where it really
   lands). Predicting one endpoint from every state makes a single network serve 1, 2 and 4 steps, and the
   rollout states teach later steps to repair what earlier ones got wrong, which plain regression to the
   teacher endpoint (blurry at one step) cannot.
6. ``features``: the small classifier whose penultimate features give the Fréchet distance.
7. ``export``: weights into the package (fp16 where harmless), with a sha256 manifest.
8. ``evaluate``: the exported model measured with the analytic checker (written to ``<out>/eval.json``).

The teacher, trajectory and student stages are written once for any flow model (``fit_teacher``,
``sample_trajectories``, ``distil_student``, driven through a ``Flow``: how to call the model and its inference
grid); ``flux_train.py`` uses them for the tiny-flux model.

Everything is seeded: data come from ``data.training_batch(seed, step, batch)`` and noise from a generator
seeded with (stage seed, step), so a resumed run sees exactly the data and noise of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from nag_guidance.tiny import data
from nag_guidance.tiny.features import GEOMETRY, HEADS, FeatureNet, feature_batch
from nag_guidance.tiny.model import (
    LATENT_CHANNELS,
    LATENT_SIZE,
    NUM_TRAIN_TIMESTEPS,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    parameter_count,
)

RecipeT = TypeVar("RecipeT", bound="FlowRecipe")

STAGES: tuple[str, ...] = ("vae", "decoder", "teacher", "trajectories", "student", "features", "export", "evaluate")


@dataclass(frozen=True)
class FlowRecipe:
    """The knobs of the stages both embedded models' recipes share: teacher, trajectories and student."""

    seed: int = 0
    teacher_steps: int = 3600
    teacher_batch: int = 64
    teacher_lr: float = 6e-4
    teacher_ema: float = 0.999
    trajectory_steps: int = 16
    trajectory_count: int = 6144
    trajectory_batch: int = 256
    trajectory_guidance: float = 3.0
    student_steps: int = 1500
    student_batch: int = 64
    student_lr: float = 2e-4
    student_ema: float = 0.995
    save_every: int = 200

    def scaled(self: RecipeT, factor: float) -> RecipeT:
        """The same recipe with every step/sample count multiplied by ``factor`` (smoke runs)."""
        return scale_recipe(self, factor)


@dataclass(frozen=True)
class Recipe(FlowRecipe):
    """Every knob of the training run (recorded in ``<out>/recipe.json`` and the exported ``metadata.json``)."""

    vae_steps: int = 700
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-5
    decoder_steps: int = 500
    decoder_lr: float = 5e-4
    decoder_noise: float = 0.3
    features_steps: int = 600
    features_batch: int = 128
    features_lr: float = 2e-3


def scale_recipe(recipe: RecipeT, factor: float) -> RecipeT:
    """A recipe dataclass with every ``*_steps`` count (but ``trajectory_steps``), the trajectory count and
    ``save_every`` multiplied by ``factor``."""
    changes = {
        f.name: max(2, int(getattr(recipe, f.name) * factor))
        for f in fields(recipe)
        if f.name.endswith("_steps") and f.name != "trajectory_steps"
    }
    changes["trajectory_count"] = max(recipe.trajectory_batch, int(recipe.trajectory_count * factor))
    changes["save_every"] = max(2, int(recipe.save_every * factor))
    return replace(recipe, **changes)


STUDENT_GRID_STEPS = 4
"""The student is trained on the sigmas of the 4-step grid, which contains the 1- and 2-step grids."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def step_generator(*seed: int) -> torch.Generator:
    """A torch generator that depends only on the given integers (stage seed, step, ...)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)


def save_atomic(obj: object, path: Path) -> None:
    """Write via a temporary file so a run killed mid-save never leaves a truncated checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class StageTimer:
    """Wall time spent per stage, summed over resumed runs, kept in ``<out>/times.json``."""

    def __init__(self, out: Path) -> None:
        self.path = out / "times.json"
        self.times: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def add(self, stage: str, seconds: float) -> None:
        self.times[stage] = self.times.get(stage, 0.0) + seconds
        self.path.write_text(json.dumps(self.times, indent=2))


class ThreadGovernor:
    """Uses one torch thread while another process competes for the CPU, ``threads`` otherwise.

    On a 2-core machine shared with a test run, two OpenMP threads wait on each other at every barrier and
    a step gets 3–40× slower; one thread on the free core loses far less. Reads the kernel's count of runnable
    threads (``/proc/loadavg``) and switches only after the same verdict several steps in a row.
    """

    def __init__(self, patience: int = 3) -> None:
        self.threads, self.patience, self.streak = torch.get_num_threads(), patience, 0

    def configure(self, threads: int) -> None:
        self.threads, self.streak = threads, 0
        torch.set_num_threads(threads)

    def update(self) -> None:
        if self.threads < 2:
            return
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return
        want = 1 if running - torch.get_num_threads() >= 1 else self.threads
        self.streak = self.streak + 1 if want != torch.get_num_threads() else 0
        if self.streak >= self.patience:
            torch.set_num_threads(want)
            self.streak = 0


GOVERNOR = ThreadGovernor()


def training_loop(
    out: Path,
    name: str,
    total: int,
    save_every: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    timer: StageTimer,
) -> Iterator[int]:
    """Yields the step numbers still to do, restoring and saving ``modules`` + ``optimizer`` around them."""
    checkpoint = out / name / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        log(f"{name}: resuming at step {start}/{total}")
    began = time.perf_counter()
    for step in range(start, total):
        GOVERNOR.update()
        yield step
        if (step + 1) % save_every == 0 or step + 1 == total:
            state = {"modules": {k: m.state_dict() for k, m in modules.items()}, "step": step + 1}
            save_atomic({**state, "optimizer": optimizer.state_dict()}, checkpoint)
            timer.add(name, time.perf_counter() - began)
            began = time.perf_counter()


class Captions:
    """Caption → token ids, cached: the caption set is small and the slow tokenizer is not."""

    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def ids(self, captions: list[str]) -> torch.Tensor:
        for text in set(captions) - set(self.cache):
            self.cache[text] = self.tokenizer(
                text,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
        return torch.stack([self.cache[c] for c in captions])


# ----------------------------------------------------------------------------------------------------- stages


def train_vae(out: Path, recipe: Recipe, timer: StageTimer) -> None:
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    for step in training_loop(out, "vae", recipe.vae_steps, recipe.save_every, {"vae": vae}, optimizer, timer):
        images, _, _ = data.training_batch(recipe.seed + 1, step, recipe.vae_batch)
        pixels = to_pixels(images)
        posterior = vae.encode(pixels).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=step_generator(1, step))
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels) + recipe.vae_kl_weight * kl
        set_lr(optimizer, lr_at(step, recipe.vae_steps, recipe.vae_lr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step + 1 == recipe.vae_steps:
            log(f"vae {step + 1}/{recipe.vae_steps} loss {loss.item():.4f} kl {kl.item():.3f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(to_pixels(data.training_batch(recipe.seed + 2, i, 256)[0])).latent_dist.mean for i in range(4)]
        )
    scale = 1.0 / latents.std().item()
    log(f"vae: latent mean {latents.mean().item():.3f} std {latents.std().item():.3f} → scaling_factor {scale:.4f}")
    save_atomic({"vae": vae.state_dict(), "scaling_factor": scale}, out / "vae" / "final.pt")


def load_vae(out: Path, stage: str = "decoder") -> AutoencoderKL:
    """The VAE after ``stage`` ("vae", or "decoder": same encoder, so the same latents, fine-tuned decoder)."""
    state = torch.load(out / stage / "final.pt", weights_only=True)
    vae = build_vae()
    vae.load_state_dict(state["vae"])
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    return vae.eval().requires_grad_(False)


def train_decoder(out: Path, recipe: Recipe, timer: StageTimer) -> None:
    """Sharpen the decoder with the encoder frozen (latents, hence the flow models' data, do not change).

    Latents get Gaussian noise of random strength, so the decoder also maps the slightly-off latents a few-step
    sampler produces to flat colours and hard edges.
    """
    vae = load_vae(out, "vae")
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in decoder:
        p.requires_grad_(True)
    vae.decoder.train()
    optimizer = torch.optim.AdamW(decoder, lr=recipe.decoder_lr, weight_decay=0.0)
    scale = vae.config.scaling_factor
    total = recipe.decoder_steps
    for step in training_loop(out, "decoder", total, recipe.save_every, {"vae": vae}, optimizer, timer):
        images, _, _ = data.training_batch(recipe.seed + 7, step, recipe.vae_batch)
        pixels = to_pixels(images)
        latents = encode_latents(vae, images)
        generator = step_generator(7, step)
        strength = recipe.decoder_noise * torch.rand(len(latents), 1, 1, 1, generator=generator)
        latents = latents + strength * torch.randn(latents.shape, generator=generator)
        recon = vae.decode(latents / scale).sample
        loss = F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels)
        set_lr(optimizer, lr_at(step, total, recipe.decoder_lr, warmup=20))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step + 1 == total:
            log(f"decoder {step + 1}/{total} loss {loss.item():.4f}")
    save_atomic({"vae": vae.state_dict(), "scaling_factor": scale}, out / "decoder" / "final.pt")


def encode_latents(vae: AutoencoderKL, images: np.ndarray) -> torch.Tensor:
    """Scaled latents of uint8 images (the posterior mean: the data the flow models learn)."""
    with torch.no_grad():
        return vae.encode(to_pixels(images)).latent_dist.mean * vae.config.scaling_factor


def sample_sigmas(count: int, generator: torch.Generator) -> torch.Tensor:
    """Half uniform, half logit-normal (which favours the middle of the path, where the flow is hardest)."""
    uniform = torch.rand(count, generator=generator)
    logit_normal = torch.sigmoid(torch.randn(count, generator=generator))
    pick = torch.rand(count, generator=generator) < 0.5
    return torch.where(pick, uniform, logit_normal).clamp(1e-3, 1.0)


def image_latent_batch(vae: AutoencoderKL, seed: int) -> LatentBatch:
    """The image models' teacher data: ``data.training_batch`` images encoded by ``vae``."""

    def batch(step: int, size: int) -> tuple[torch.Tensor, list[str]]:
        images, _, texts = data.training_batch(seed, step, size)
        return encode_latents(vae, images), texts

    return batch


def fit_teacher(
    out: Path,
    recipe: FlowRecipe,
    timer: StageTimer,
    vae: AutoencoderKL | None,
    flow: Flow,
    encode: Callable[[list[str]], Cond],
    trained: dict[str, torch.nn.Module],
    denoiser: str,
    batches: LatentBatch | None = None,
) -> None:
    """Train the modules in ``trained`` jointly as a rectified flow (v = ε − x0 at x_σ = (1−σ)x0 + σε), with
    the data's empty captions as caption dropout; ``encode`` turns captions into the denoiser's condition
    (gradients flowing into the text encoders). The data are ``batches`` (default: the procedural images encoded
    by ``vae``). Saves the EMA weights, by name, to ``teacher/final.pt``."""
    if batches is None:
        if vae is None:
            raise ValueError("fit_teacher needs a vae or batches")
        batches = image_latent_batch(vae, recipe.seed + 3)
    emas = {name: copy.deepcopy(module).requires_grad_(False) for name, module in trained.items()}
    params = [p for module in trained.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.teacher_lr, weight_decay=0.01)
    modules = {**trained, **{f"ema_{name}": ema for name, ema in emas.items()}}
    total = recipe.teacher_steps
    running = None
    for step in training_loop(out, "teacher", total, recipe.save_every, modules, optimizer, timer):
        x0, texts = batches(step, recipe.teacher_batch)
        generator = step_generator(3, step)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = per_sample(sample_sigmas(len(x0), generator), x0)
        x = (1 - sigma) * x0 + sigma * noise
        v = flow.predict(trained[denoiser], x, sigma.flatten() * flow.timestep_scale, encode(texts))
        loss = F.mse_loss(v, noise - x0)
        set_lr(optimizer, lr_at(step, total, recipe.teacher_lr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(recipe.teacher_ema, (1 + step) / (10 + step))
        for name, ema in emas.items():
            ema_update(ema, trained[name], decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step + 1 == total:
            log(f"teacher {step + 1}/{total} loss {running:.4f}")
    save_atomic({name: ema.state_dict() for name, ema in emas.items()}, out / "teacher" / "final.pt")


def train_teacher(out: Path, recipe: Recipe, timer: StageTimer) -> None:
    vae = load_vae(out, "vae")
    tokenizer = build_tokenizer()
    captions = Captions(tokenizer)
    torch.manual_seed(recipe.seed)
    text_encoder, unet = build_text_encoder(tokenizer), build_unet()

    def encode(texts: list[str]) -> torch.Tensor:
        return text_encoder(captions.ids(texts))[0]

    trained = {"text_encoder": text_encoder, "unet": unet}
    fit_teacher(out, recipe, timer, vae, SD_FLOW, encode, trained, "unet")


def load_teacher(out: Path) -> tuple[CLIPTokenizer, CLIPTextModel, UNet2DConditionModel]:
    state = torch.load(out / "teacher" / "final.pt", weights_only=True)
    tokenizer = build_tokenizer()
    text_encoder, unet = build_text_encoder(tokenizer), build_unet()
    text_encoder.load_state_dict(state["text_encoder"])
    unet.load_state_dict(state["unet"])
    return tokenizer, text_encoder.eval().requires_grad_(False), unet.eval().requires_grad_(False)


@functools.lru_cache
def grid(steps: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Sigmas (ending in 0) and UNet timesteps of the scheduler's ``steps``-step grid, exactly as at inference."""
    scheduler = build_scheduler()
    scheduler.set_timesteps(steps)
    return tuple(scheduler.sigmas.tolist()), tuple(scheduler.timesteps.tolist())


Cond = torch.Tensor | tuple[torch.Tensor, ...]
"""A denoiser's text condition: one tensor (SD: token embeddings) or a tuple (Flux: T5 tokens, CLIP pooled)."""


def cond_map(fn: Callable[..., torch.Tensor], *conds: Cond) -> Cond:
    """``fn`` applied to the condition(s), part by part when they are tuples."""
    if isinstance(conds[0], torch.Tensor):
        return fn(*conds)
    return tuple(fn(*parts) for parts in zip(*conds, strict=True))


@dataclass(frozen=True)
class Flow:
    """How the shared stages drive one model family: ``predict(model, x, timesteps, cond)`` is the velocity at
    latents ``x`` (N, *latent_shape); the model's timestep is ``timestep_scale · σ``; ``grid(steps)`` gives the
    sigmas (ending in 0) and model timesteps of the inference grid. ``latent_shape`` is one sample's latents
    (the image models' (4, 16, 16); tiny-wan's video latents have a frame axis too)."""

    predict: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Cond], torch.Tensor]
    timestep_scale: float
    grid: Callable[[int], tuple[tuple[float, ...], tuple[float, ...]]]
    latent_shape: tuple[int, ...] = (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast against the (N, ...) tensor ``like``, whatever its number of axes."""
    return values.view(-1, *[1] * (like.ndim - 1))


LatentBatch = Callable[[int, int], tuple[torch.Tensor, list[str]]]
"""``(step, batch) → (x0 latents, captions)``: the teacher's training data, a pure function of its arguments."""


SD_FLOW = Flow(predict=lambda unet, x, t, cond: unet(x, t, cond).sample, timestep_scale=NUM_TRAIN_TIMESTEPS, grid=grid)


def velocity(
    flow: Flow,
    model: torch.nn.Module,
    x: torch.Tensor,
    timestep: float,
    cond: Cond,
    uncond: Cond,
    guidance: float,
) -> torch.Tensor:
    """Model velocity, with classifier-free guidance when ``guidance`` ≠ 1."""
    t = torch.full((len(x),), float(timestep))
    if guidance == 1.0:
        return flow.predict(model, x, t, cond)
    both = flow.predict(
        model, torch.cat([x, x]), torch.cat([t, t]), cond_map(lambda u, c: torch.cat([u, c]), uncond, cond)
    )
    v_uncond, v_cond = both.chunk(2)
    return v_uncond + guidance * (v_cond - v_uncond)


def grid_positions(fine: tuple[float, ...], coarse: tuple[float, ...]) -> list[int]:
    """Index in ``fine`` of every sigma of ``coarse`` (the finer grid must contain the coarser one)."""
    positions = [min(range(len(fine)), key=lambda i: abs(fine[i] - s)) for s in coarse]
    if any(abs(fine[i] - s) > 1e-6 for i, s in zip(positions, coarse, strict=True)):
        raise ValueError(f"grid {fine} does not contain {coarse}")
    return positions


def sample_trajectories(
    out: Path,
    recipe: FlowRecipe,
    timer: StageTimer,
    flow: Flow,
    teacher: torch.nn.Module,
    encode: Callable[[list[str]], Cond],
    captions: Callable[[int, int], list[str]] | None = None,
) -> None:
    """The teacher's guided ODE from fresh noise on its ``trajectory_steps`` grid, keeping the noise, the
    endpoint and the states on the student's 4-step grid, in chunks under ``trajectories/``. ``captions(chunk,
    count)`` gives each chunk's captions (default: those of ``data.training_batch``)."""

    def image_captions(chunk: int, count: int) -> list[str]:
        return data.training_batch(recipe.seed + 4, chunk, count)[2]

    captions = captions or image_captions
    sigmas, timesteps = flow.grid(recipe.trajectory_steps)
    kept_indices = grid_positions(sigmas, flow.grid(STUDENT_GRID_STEPS)[0][1:-1])
    folder = out / "trajectories"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = math.ceil(recipe.trajectory_count / recipe.trajectory_batch)
    with torch.no_grad():
        empty = encode([""])
    for chunk in range(chunks):
        path = folder / f"chunk_{chunk:04d}.pt"
        if path.exists():
            continue
        GOVERNOR.update()
        began = time.perf_counter()
        texts = captions(chunk, recipe.trajectory_batch)
        with torch.no_grad():
            cond = encode(texts)
            uncond = cond_map(lambda u, c: u.expand_as(c), empty, cond)
            noise = torch.randn((len(texts), *flow.latent_shape), generator=step_generator(4, chunk))
            x, states = noise, []
            for i, t in enumerate(timesteps):
                v = velocity(flow, teacher, x, t, cond, uncond, recipe.trajectory_guidance)
                x = x + (sigmas[i + 1] - sigmas[i]) * v
                if i + 1 in kept_indices:
                    states.append(x)
        save_atomic({"noise": noise, "states": torch.stack(states, 1), "end": x, "captions": texts}, path)
        timer.add("trajectories", time.perf_counter() - began)
        log(f"trajectories {chunk + 1}/{chunks} ({time.perf_counter() - began:.1f}s)")


def make_trajectories(out: Path, recipe: Recipe, timer: StageTimer) -> None:
    tokenizer, text_encoder, unet = load_teacher(out)
    captions = Captions(tokenizer)
    sample_trajectories(out, recipe, timer, SD_FLOW, unet, lambda texts: text_encoder(captions.ids(texts))[0])


def load_trajectories(out: Path) -> dict[str, torch.Tensor | list[str]]:
    parts = [torch.load(p, weights_only=True) for p in sorted((out / "trajectories").glob("chunk_*.pt"))]
    return {
        "noise": torch.cat([p["noise"] for p in parts]),
        "states": torch.cat([p["states"] for p in parts]),
        "end": torch.cat([p["end"] for p in parts]),
        "captions": [c for p in parts for c in p["captions"]],
    }


def student_inputs(
    pool: dict,
    index: torch.Tensor,
    level: torch.Tensor,
    mode: torch.Tensor,
    student: torch.nn.Module,
    cond: Cond,
    generator: torch.Generator,
    flow: Flow = SD_FLOW,
) -> torch.Tensor:
    """The states the student is trained on, at 4-step grid level ``level`` (0 = pure noise).

    ``mode`` 0: the teacher's trajectory state; 1: the straight line from noise to the teacher's endpoint;
    2: the student's own Euler rollout from the same noise, on the 4-step grid or (for the middle level, half
    the time) the 2-step grid.
    """
    sigmas, timesteps = flow.grid(STUDENT_GRID_STEPS)
    noise, end = pool["noise"][index], pool["end"][index]
    sigma = per_sample(torch.tensor(sigmas)[level], noise)
    teacher_state = torch.cat([noise[:, None], pool["states"][index]], 1)[torch.arange(len(index)), level]
    straight = torch.where(per_sample(level, noise) == 0, noise, sigma * noise + (1 - sigma) * end)
    x = torch.where(per_sample(mode, noise) == 0, teacher_state, straight)
    rollout = (mode == 2) & (level > 0)
    if rollout.any():
        rows = rollout.nonzero().flatten()
        two_step = (level[rows] == 2) & (torch.rand(len(rows), generator=generator) < 0.5)
        row_cond = cond_map(lambda c: c[rows], cond)
        with torch.no_grad():
            state = noise[rows].clone()
            for k in range(int(level[rows].max())):
                t = torch.full((len(rows),), float(timesteps[k]))
                v = flow.predict(student, state, t, row_cond)
                active = per_sample(level[rows] > k, state)
                jump = torch.where(two_step & (k == 0), sigmas[2] - sigmas[0], sigmas[k + 1] - sigmas[k])
                stepped = state + per_sample(jump, state) * v
                state = torch.where(active & per_sample(~(two_step & (k == 1)), state), stepped, state)
        x[rows] = state
    return x


def distil_student(
    out: Path,
    recipe: FlowRecipe,
    timer: StageTimer,
    flow: Flow,
    teacher: torch.nn.Module,
    encode: Callable[[list[str]], Cond],
) -> torch.nn.Module:
    """The few-step student (initialised from ``teacher``) trained on the trajectories; returns its EMA."""
    pool = load_trajectories(out)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(teacher)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.student_lr, weight_decay=0.0)
    sigmas, timesteps = flow.grid(STUDENT_GRID_STEPS)
    total = recipe.student_steps
    running = None
    count = len(pool["captions"])
    modules = {"student": student, "ema": ema}
    for step in training_loop(out, "student", total, recipe.save_every, modules, optimizer, timer):
        generator = step_generator(5, step)
        index = torch.randint(count, (recipe.student_batch,), generator=generator)
        level = torch.randint(STUDENT_GRID_STEPS, (recipe.student_batch,), generator=generator)
        mode = torch.randint(3, (recipe.student_batch,), generator=generator)
        with torch.no_grad():
            cond = encode([pool["captions"][i] for i in index])
        x = student_inputs(pool, index, level, mode, student, cond, generator, flow)
        sigma = per_sample(torch.tensor(sigmas)[level], x)
        t = torch.tensor(timesteps, dtype=torch.float32)[level]
        v = flow.predict(student, x, t, cond)
        errors = (x - sigma * v - pool["end"][index]).pow(2).flatten(1).mean(1)
        loss = errors.mean()
        per_level = torch.zeros(STUDENT_GRID_STEPS).index_add_(0, level, errors.detach())
        per_level /= torch.bincount(level, minlength=STUDENT_GRID_STEPS).clamp(min=1)
        set_lr(optimizer, lr_at(step, total, recipe.student_lr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, student, min(recipe.student_ema, (1 + step) / (10 + step)))
        running = per_level if running is None else 0.95 * running + 0.05 * per_level
        if step % 25 == 0 or step + 1 == total:
            log(f"student {step + 1}/{total} endpoint error by level " + " ".join(f"{e:.4f}" for e in running))
    return ema


def train_student(out: Path, recipe: Recipe, timer: StageTimer) -> None:
    tokenizer, text_encoder, teacher = load_teacher(out)
    captions = Captions(tokenizer)
    ema = distil_student(out, recipe, timer, SD_FLOW, teacher, lambda texts: text_encoder(captions.ids(texts))[0])
    save_atomic({"unet": ema.state_dict()}, out / "student" / "final.pt")


def train_features(out: Path, recipe: Recipe, timer: StageTimer) -> None:
    torch.manual_seed(recipe.seed)
    net = FeatureNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.features_lr, weight_decay=1e-4)
    total = recipe.features_steps
    for step in training_loop(out, "features", total, recipe.save_every, {"net": net}, optimizer, timer):
        pixels, targets = feature_batch(recipe.seed + 6, step, recipe.features_batch)
        outputs = net(pixels)
        logits = {key: outputs[key] for key in HEADS}
        loss = F.mse_loss(outputs[GEOMETRY], targets[GEOMETRY])
        loss = loss + sum(F.cross_entropy(logits[key], targets[key]) for key in logits)
        set_lr(optimizer, lr_at(step, total, recipe.features_lr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step + 1 == total:
            accuracy = {k: (logits[k].argmax(1) == targets[k]).float().mean().item() for k in logits}
            log(
                f"features {step + 1}/{total} loss {loss.item():.4f} "
                + " ".join(f"{k} {a:.3f}" for k, a in accuracy.items())
            )
    save_atomic({"net": net.eval().state_dict()}, out / "features" / "final.pt")


def export(out: Path, recipe: Recipe, timer: StageTimer, export_dir: Path) -> None:
    from nag_guidance.tiny.loading import write_weights

    tokenizer, text_encoder, teacher = load_teacher(out)
    student = build_unet()
    student.load_state_dict(torch.load(out / "student" / "final.pt", weights_only=True)["unet"])
    features = FeatureNet()
    features.load_state_dict(torch.load(out / "features" / "final.pt", weights_only=True)["net"])
    vae = load_vae(out)
    modules = {"student": student, "teacher": teacher, "vae": vae, "text_encoder": text_encoder, "features": features}
    metadata = {
        "recipe": asdict(recipe),
        "stage_seconds": timer.times,
        "parameters": {name: parameter_count(module) for name, module in modules.items()},
    }
    write_weights(export_dir, tokenizer, text_encoder, vae, student, teacher, features, metadata)
    log(f"export: wrote {export_dir}")


def fp16_storage_effect(out: Path, export_dir: Path, per_caption: int = 8) -> dict[str, float]:
    """How much storing weights in fp16 changes 4-step student images versus the fp32 training weights."""
    from nag_guidance.tiny.loading import load_pipeline

    tokenizer, text_encoder, _ = load_teacher(out)
    student = build_unet()
    student.load_state_dict(torch.load(out / "student" / "final.pt", weights_only=True)["unet"])
    full = StableDiffusionPipeline(
        vae=load_vae(out),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=student.eval(),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    full.set_progress_bar_config(disable=True)
    return storage_effect(full, load_pipeline(path=export_dir), per_caption)


def storage_effect(full: Callable[..., Any], shipped: Callable[..., Any], per_caption: int = 8) -> dict[str, float]:
    """Pixel and checker differences between 4-step images of the fp32 training weights (``full``) and the
    exported ones (``shipped``), on the held-out captions with the same seeds."""
    from nag_guidance.tiny.checker import check
    from nag_guidance.tiny.evaluate import generate

    prompts = [text for text, _ in data.held_out_captions() for _ in range(per_caption)]
    seeds = list(range(len(prompts)))
    a = generate(full, prompts, seeds)
    b = generate(shipped, prompts, seeds)
    ca, cb = check(a), check(b)
    same = (ca.shape == cb.shape) & (ca.colour == cb.colour) & (ca.background == cb.background)
    difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {
        "mean_abs_pixel": float(difference.mean()),
        "max_abs_pixel": int(difference.max()),
        "same_reading": float(same.mean()),
    }


def evaluate_export(out: Path, export_dir: Path, grid_path: Path | None) -> None:
    from nag_guidance.tiny.evaluate import full_report, render_sample_grid
    from nag_guidance.tiny.loading import load_pipeline

    report = full_report(export_dir, progress=log)
    report["fp16_storage"] = fp16_storage_effect(out, export_dir)
    log(f"fp16 storage: {report['fp16_storage']}")
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    log("evaluate: " + json.dumps(report, indent=2))
    if grid_path is not None:
        render_sample_grid(load_pipeline(path=export_dir), grid_path)
        log(f"evaluate: sample grid → {grid_path}")


def start_run(out: Path, recipe: FlowRecipe) -> StageTimer:
    """Create ``out``, record the recipe in ``out/recipe.json`` (warning when it differs from the one a resumed
    folder was started with) and return the folder's stage timer."""
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out / "recipe.json"
    if recipe_file.exists():
        before = json.loads(recipe_file.read_text())
        changed = sorted(k for k, v in asdict(recipe).items() if before.get(k) != v)
        if changed:
            log(
                f"warning: recipe changed since this folder was started ({', '.join(changed)}); finished stages "
                "are kept, so use a fresh --out for a clean run"
            )
    recipe_file.write_text(json.dumps(asdict(recipe), indent=2))
    return StageTimer(out)


def run_stages(
    out: Path,
    order: tuple[str, ...],
    selected: list[str],
    runners: dict[str, Callable[[], None]],
    done: dict[str, str],
    timer: StageTimer,
    untimed: tuple[str, ...] = (),
) -> None:
    """Run the ``selected`` stages in ``order``, skipping those whose ``done`` file exists; the wall time of the
    ``untimed`` stages (those that do not time themselves) is added to ``timer``."""
    for stage in order:
        if stage not in selected:
            continue
        if stage in done and (out / done[stage]).exists():
            log(f"{stage}: done already ({out / done[stage]})")
            continue
        began = time.perf_counter()
        runners[stage]()
        if stage in untimed:
            timer.add(stage, time.perf_counter() - began)
        log(f"{stage}: finished in {time.perf_counter() - began:.0f}s this run; totals {timer.times}")


def stage_arguments(description: str, stages: tuple[str, ...], out: str) -> argparse.ArgumentParser:
    """The command-line options both recipes share."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path(out), help="checkpoints, logs and eval.json")
    parser.add_argument("--stages", default=",".join(stages), help=f"comma-separated subset of {stages}")
    parser.add_argument("--export-dir", type=Path, default=None, help="default: the package's weights folder")
    parser.add_argument("--grid", type=Path, default=None, help="also render a sample grid PNG here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply step counts (smoke runs)")
    return parser


def selected_stages(parser: argparse.ArgumentParser, args: argparse.Namespace, stages: tuple[str, ...]) -> list[str]:
    """The ``--stages`` list, checked; also configures threads for training."""
    selected = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(selected) - set(stages)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; allowed: {', '.join(stages)}")
    GOVERNOR.configure(args.threads)
    torch.set_flush_denormal(True)
    return selected


def main(argv: list[str] | None = None) -> None:
    from nag_guidance.tiny.loading import weights_path

    parser = stage_arguments(__doc__.split("\n")[0], STAGES, "runs/tiny")
    args = parser.parse_args(argv)
    stages = selected_stages(parser, args, STAGES)
    recipe = Recipe() if args.scale == 1.0 else Recipe().scaled(args.scale)
    out: Path = args.out
    timer = start_run(out, recipe)
    export_dir = args.export_dir or weights_path()
    runners: dict[str, Callable[[], None]] = {
        "vae": lambda: train_vae(out, recipe, timer),
        "decoder": lambda: train_decoder(out, recipe, timer),
        "teacher": lambda: train_teacher(out, recipe, timer),
        "trajectories": lambda: make_trajectories(out, recipe, timer),
        "student": lambda: train_student(out, recipe, timer),
        "features": lambda: train_features(out, recipe, timer),
        "export": lambda: export(out, recipe, timer, export_dir),
        "evaluate": lambda: evaluate_export(out, export_dir, args.grid),
    }
    done = {
        "vae": "vae/final.pt",
        "decoder": "decoder/final.pt",
        "teacher": "teacher/final.pt",
        "student": "student/final.pt",
        "features": "features/final.pt",
    }
    run_stages(out, STAGES, stages, runners, done, timer)


if __name__ == "__main__":
    main()
