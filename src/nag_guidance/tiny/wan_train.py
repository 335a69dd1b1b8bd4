"""Training recipe of the third embedded model, one command: ``python -m nag_guidance.tiny.wan_train --out
runs/tiny-wan``.

The image recipes' idea (``train.py``, whose stage functions this module drives through a ``Flow``) for a
``WanTransformer3DModel`` on procedural clips (``video_data.py``):

1. ``vae``: the ``AutoencoderKLWan`` (9×32×32 frames ↔ 16×5×8×8 latents); its per-channel latent mean and
   std are measured afterwards and stored in its config (the pipeline decodes ``latents · std + mean``).
2. ``latents``: a fixed pool of encoded training clips (encoding on the fly would cost more than the teacher's
   own step); captions are still drawn afresh, per use, from each clip's caption forms.
3. ``teacher``: UMT5 text encoder + transformer trained jointly as a rectified flow (v = ε − x0, transformer
   timestep 1000·σ), on the 512-token zero-padded context the pipeline builds by default, with empty captions
   as caption dropout.
4. ``trajectories``: the teacher's guided ODE from fresh noise on the pipeline's 16-step grid, keeping the
   states on the 4-step grid.
5. ``student``: the few-step transformer, trained to predict the coupled endpoint from teacher, straight-line
   and own-rollout states on the uniform 1/2/4-step grid.
6. ``export``: the weights into ``tiny/weights/wan`` (fp16 where harmless) with a sha256 manifest.
7. ``evaluate``: the exported pipeline measured with the video checker (``<out>/eval.json``).

Seeded and resumable like ``train.py``; stage wall times go to ``<out>/times.json``. ``--quick`` is a tiny
recipe for smoke tests.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from nag_guidance.tiny import video_data
from nag_guidance.tiny.model import NUM_TRAIN_TIMESTEPS, parameter_count
from nag_guidance.tiny.train import (
    GOVERNOR,
    Flow,
    FlowRecipe,
    StageTimer,
    distil_student,
    fit_teacher,
    grid,
    log,
    lr_at,
    run_stages,
    sample_trajectories,
    save_atomic,
    selected_stages,
    set_lr,
    stage_arguments,
    start_run,
    step_generator,
    training_loop,
)
from nag_guidance.tiny.wan_model import (
    LATENT_CHANNELS,
    LATENT_SHAPE,
    WanText,
    build_wan_text_encoder,
    build_wan_tokenizer,
    build_wan_transformer,
    build_wan_vae,
    compact_context,
    wan_predict,
)

STAGES: tuple[str, ...] = ("vae", "latents", "teacher", "trajectories", "student", "export", "evaluate")
EVAL_STEPS: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class WanRecipe(FlowRecipe):
    """Every knob of the tiny-wan run (in ``<out>/recipe.json`` and the exported ``metadata.json``), sized for
    about 90 minutes on one core of the 2-core CPU (docs/tiny-wan.md)."""

    vae_steps: int = 1400
    vae_batch: int = 8
    vae_lr: float = 5e-4
    vae_kl_weight: float = 1e-6
    vae_latent_noise: float = 0.1
    vae_min_reading: float = 0.9
    pool_size: int = 8192
    pool_batch: int = 256
    teacher_steps: int = 1500
    teacher_batch: int = 32
    trajectory_steps: int = 8
    trajectory_count: int = 1280
    trajectory_batch: int = 128
    trajectory_guidance: float = 5.0
    student_steps: int = 500
    student_batch: int = 32
    eval_seeds: int = 8
    teacher_eval_seeds: int = 2

    @classmethod
    def quick(cls) -> WanRecipe:
        """A few steps with small batches: exercises every stage in seconds (tests, smoke runs)."""
        return replace(
            cls(),
            vae_steps=3,
            vae_batch=2,
            pool_size=16,
            pool_batch=8,
            teacher_steps=3,
            teacher_batch=4,
            trajectory_steps=4,
            trajectory_count=8,
            trajectory_batch=4,
            student_steps=3,
            student_batch=4,
            save_every=2,
            eval_seeds=1,
            teacher_eval_seeds=1,
            vae_min_reading=0.0,
        )


WAN_FLOW = Flow(predict=wan_predict, timestep_scale=NUM_TRAIN_TIMESTEPS, grid=grid, latent_shape=LATENT_SHAPE)
"""The shipped scheduler is the SD model's (``model.build_scheduler``), so its grid function is ``train.grid``."""


def to_video_pixels(frames: np.ndarray) -> torch.Tensor:
    """(N, F, H, W, 3) uint8 → (N, 3, F, H, W) float in [-1, 1], the VAE's input."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def train_wan_vae(out: Path, recipe: WanRecipe, timer: StageTimer) -> None:
    torch.manual_seed(recipe.seed)
    vae = build_wan_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    total = recipe.vae_steps
    for step in training_loop(out, "vae", total, recipe.save_every, {"vae": vae}, optimizer, timer):
        pixels = to_video_pixels(video_data.training_clips(recipe.seed + 1, step, recipe.vae_batch)[0])
        posterior = vae.encode(pixels).latent_dist
        # Decode the posterior mean plus noise at a tenth of the latents' spread: sampling the posterior itself
        # left its std at about the latents' spread (the KL weight is tiny) and the reconstructions blurred.
        spread = recipe.vae_latent_noise * posterior.mean.detach().std()
        z = posterior.mean + spread * torch.randn(posterior.mean.shape, generator=step_generator(1, step))
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels) + recipe.vae_kl_weight * kl
        set_lr(optimizer, lr_at(step, total, recipe.vae_lr, warmup=min(100, total // 10 + 1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0 or step + 1 == total:
            log(f"vae {step + 1}/{total} loss {loss.item():.4f} kl {kl.item():.3f}")
    vae.eval()
    with torch.no_grad():
        samples = [video_data.training_clips(recipe.seed + 2, i, 64)[0] for i in range(4)]
        latents = torch.cat([vae.encode(to_video_pixels(s)).latent_dist.mean for s in samples])
    mean = latents.mean((0, 2, 3, 4))
    std = latents.std((0, 2, 3, 4)).clamp(min=1e-3)
    log(f"vae: latent channel means {mean.numpy().round(2)} stds {std.numpy().round(2)}")
    reads = reconstruction_reading(vae, recipe.seed + 2)
    log(f"vae: the video checker reads reconstructions right: {json.dumps(reads)}")
    if reads["all"] < recipe.vae_min_reading:
        raise SystemExit(
            f"vae: only {reads['all']:.0%} of reconstructions read right (< {recipe.vae_min_reading:.0%}): a flow "
            "trained on these latents cannot pass the checker. Raise vae_steps and rerun (training resumes from "
            f"{out / 'vae' / 'checkpoint.pt'})."
        )
    state = {"vae": vae.state_dict(), "mean": mean.tolist(), "std": std.tolist(), "reconstruction": reads}
    save_atomic(state, out / "vae" / "final.pt")


def reconstruction_reading(vae: AutoencoderKLWan, seed: int, count: int = 64) -> dict[str, float]:
    """Fractions of reconstructed training clips that the video checker reads as their ground truth: what the
    flow models can reach at best."""
    from nag_guidance.tiny.video_checker import check_clips

    frames, clips, _ = video_data.training_clips(seed, 10_000, count)
    with torch.no_grad():
        recon = vae.decode(vae.encode(to_video_pixels(frames)).latent_dist.mean).sample
    pixels = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
    specs = [video_data.VideoSpec(c.shape, c.colour, c.background, c.motion) for c in clips]
    return {key: float(value.mean()) for key, value in check_clips(pixels).matches(specs).items()}


def load_wan_vae(out: Path) -> AutoencoderKLWan:
    state = torch.load(out / "vae" / "final.pt", weights_only=True)
    vae = build_wan_vae()
    vae.load_state_dict(state["vae"])
    vae.register_to_config(latents_mean=state["mean"], latents_std=state["std"])
    return vae.eval().requires_grad_(False)


def normalise(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents → the flow's (zero mean, unit std per channel), the inverse of the pipeline's decode step."""
    mean = torch.tensor(vae.config.latents_mean).view(1, LATENT_CHANNELS, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, LATENT_CHANNELS, 1, 1, 1)
    return (latents - mean) / std


def encode_pool(out: Path, recipe: WanRecipe, timer: StageTimer) -> None:
    """Encode ``pool_size`` training clips (posterior means, normalised) into ``latents/pool.pt``, in chunks
    that survive an interruption."""
    vae = load_wan_vae(out)
    folder = out / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = math.ceil(recipe.pool_size / recipe.pool_batch)
    for chunk in range(chunks):
        path = folder / f"chunk_{chunk:04d}.pt"
        if path.exists():
            continue
        GOVERNOR.update()
        began = time.perf_counter()
        frames, clips, _ = video_data.training_clips(recipe.seed + 5, chunk, recipe.pool_batch)
        with torch.no_grad():
            latents = normalise(vae, vae.encode(to_video_pixels(frames)).latent_dist.mean)
        save_atomic({"latents": latents.half(), "clips": [asdict(c) for c in clips]}, path)
        timer.add("latents", time.perf_counter() - began)
        log(f"latents {chunk + 1}/{chunks} ({time.perf_counter() - began:.1f}s)")
    parts = [torch.load(folder / f"chunk_{c:04d}.pt", weights_only=True) for c in range(chunks)]
    pool = {
        "latents": torch.cat([p["latents"] for p in parts]),
        "clips": [clip for p in parts for clip in p["clips"]],
    }
    save_atomic(pool, folder / "pool.pt")


class PoolBatches:
    """The teacher's data: clips drawn from the latent pool, captions drawn afresh (seeded by the step)."""

    def __init__(self, out: Path, seed: int) -> None:
        pool = torch.load(out / "latents" / "pool.pt", weights_only=True)
        self.latents = pool["latents"]
        self.clips = [video_data.Clip(**c) for c in pool["clips"]]
        self.seed = seed

    def __call__(self, step: int, size: int) -> tuple[torch.Tensor, list[str]]:
        rng = np.random.default_rng([self.seed, step])
        index = rng.integers(len(self.clips), size=size)
        texts = video_data.training_captions(rng, [self.clips[i] for i in index])
        return self.latents[torch.from_numpy(index)].float(), texts


def trajectory_captions(seed: int) -> Callable[[int, int], list[str]]:
    def captions(chunk: int, count: int) -> list[str]:
        rng = np.random.default_rng([seed, chunk])
        return video_data.training_captions(rng, [video_data.random_clip(rng) for _ in range(count)])

    return captions


def build_text(compact: bool) -> WanText:
    tokenizer = build_wan_tokenizer()
    return WanText(tokenizer, build_wan_text_encoder(tokenizer), compact)


def train_wan_teacher(out: Path, recipe: WanRecipe, timer: StageTimer) -> None:
    batches = PoolBatches(out, recipe.seed + 3)
    torch.manual_seed(recipe.seed)
    text = build_text(compact=True)
    trained = {"text_encoder": text.encoder, "transformer": compact_context(build_wan_transformer())}
    fit_teacher(out, recipe, timer, None, WAN_FLOW, text, trained, "transformer", batches)


def load_wan_teacher(out: Path, compact: bool = True) -> tuple[WanText, WanTransformer3DModel]:
    """The teacher's text side and transformer, frozen; ``compact``: on the compact training context (the
    training stages), else with the stock processors on the pipeline's 512 tokens (export)."""
    state = torch.load(out / "teacher" / "final.pt", weights_only=True)
    text = build_text(compact)
    transformer = build_wan_transformer()
    text.encoder.load_state_dict(state["text_encoder"])
    transformer.load_state_dict(state["transformer"])
    text.encoder.eval().requires_grad_(False)
    if compact:
        compact_context(transformer)
    return text, transformer.eval().requires_grad_(False)


def load_wan_student(out: Path) -> WanTransformer3DModel:
    student = build_wan_transformer()
    student.load_state_dict(torch.load(out / "student" / "final.pt", weights_only=True)["transformer"])
    return student.eval().requires_grad_(False)


def make_wan_trajectories(out: Path, recipe: WanRecipe, timer: StageTimer) -> None:
    text, teacher = load_wan_teacher(out)
    sample_trajectories(out, recipe, timer, WAN_FLOW, teacher, text, trajectory_captions(recipe.seed + 4))


def train_wan_student(out: Path, recipe: WanRecipe, timer: StageTimer) -> None:
    text, teacher = load_wan_teacher(out)
    ema = distil_student(out, recipe, timer, WAN_FLOW, teacher, text)
    save_atomic({"transformer": ema.state_dict()}, out / "student" / "final.pt")


def export_wan(out: Path, recipe: WanRecipe, timer: StageTimer, export_dir: Path) -> None:
    from nag_guidance.tiny.loading import write_wan_weights

    text, teacher = load_wan_teacher(out, compact=False)
    student = load_wan_student(out)
    vae = load_wan_vae(out)
    counted = {"student": student, "teacher": teacher, "vae": vae, "text_encoder": text.encoder}
    metadata = {
        "model": "tiny-wan",
        "recipe": asdict(recipe),
        "stage_seconds": timer.times,
        "parameters": {name: parameter_count(module) for name, module in counted.items()},
    }
    write_wan_weights(export_dir, text.tokenizer, text.encoder, vae, student, teacher, metadata)
    log(f"export: wrote {export_dir}")


def generate_clips(
    pipe: Callable[..., object],
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float = 0.0,
    batch: int = 32,
) -> np.ndarray:
    """(N, F, H, W, 3) uint8 clips, clip i from ``prompts[i]`` and a generator seeded with ``seeds[i]``, with
    the pipeline's own size and frame defaults (the loading helper sets the embedded model's)."""
    parts = []
    for start in range(0, len(prompts), batch):
        GOVERNOR.update()
        chunk = slice(start, start + batch)
        output = pipe(
            prompts[chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s) for s in seeds[chunk]],
            output_type="np",
        )
        parts.append(np.round(np.asarray(output.frames) * 255).clip(0, 255).astype(np.uint8))
    return np.concatenate(parts)


def video_adherence(
    pipe: Callable[..., object], steps: int, guidance: float = 0.0, seeds_per_caption: int = 8
) -> dict[str, float]:
    """Fractions of held-out-caption clips whose attributes and motion the video checker reads as asked."""
    from nag_guidance.tiny.video_checker import check_clips

    captions = video_data.held_out_captions()
    prompts = [text for text, _ in captions for _ in range(seeds_per_caption)]
    specs = [spec for _, spec in captions for _ in range(seeds_per_caption)]
    seeds = [i for _ in captions for i in range(seeds_per_caption)]
    result = check_clips(generate_clips(pipe, prompts, seeds, steps, guidance))
    right = result.matches(specs)
    summary = {key: float(value.mean()) for key, value in right.items()}
    summary["consistency"] = float(result.consistency.mean())
    summary["track_error_px"] = float(result.track_error.mean())
    summary["samples"] = len(prompts)
    return summary


def evaluate_wan(out: Path, recipe: WanRecipe, export_dir: Path) -> None:
    from nag_guidance.tiny.loading import TEACHER_STEPS, load_wan_pipeline

    student = load_wan_pipeline(path=export_dir)
    teacher = load_wan_pipeline(path=export_dir, transformer="teacher", verify=False)
    runs = [("student", student, steps, 0.0, recipe.eval_seeds) for steps in EVAL_STEPS]
    runs += [
        ("teacher", teacher, TEACHER_STEPS, cfg, recipe.teacher_eval_seeds) for cfg in (0.0, recipe.trajectory_guidance)
    ]
    report: dict[str, object] = {}
    for name, pipe, steps, cfg, seeds in runs:
        began = time.perf_counter()
        key = f"{name}_{steps}_steps" + (f"_cfg{cfg:g}" if cfg > 1 else "")
        report[key] = video_adherence(pipe, steps, cfg, seeds)
        report[key]["seconds"] = time.perf_counter() - began
        log(f"{key}: {json.dumps(report[key])}")
        (out / "eval.json").write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> None:
    from nag_guidance.tiny.loading import wan_weights_path

    parser = stage_arguments(__doc__.split("\n")[0], STAGES, "runs/tiny-wan")
    parser.add_argument("--quick", action="store_true", help="a tiny recipe (smoke tests)")
    args = parser.parse_args(argv)
    stages = selected_stages(parser, args, STAGES)
    recipe = WanRecipe.quick() if args.quick else WanRecipe()
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    out: Path = args.out
    timer = start_run(out, recipe)
    export_dir = args.export_dir or wan_weights_path()
    runners: dict[str, Callable[[], None]] = {
        "vae": lambda: train_wan_vae(out, recipe, timer),
        "latents": lambda: encode_pool(out, recipe, timer),
        "teacher": lambda: train_wan_teacher(out, recipe, timer),
        "trajectories": lambda: make_wan_trajectories(out, recipe, timer),
        "student": lambda: train_wan_student(out, recipe, timer),
        "export": lambda: export_wan(out, recipe, timer, export_dir),
        "evaluate": lambda: evaluate_wan(out, recipe, export_dir),
    }
    done = {
        "vae": "vae/final.pt",
        "latents": "latents/pool.pt",
        "teacher": "teacher/final.pt",
        "student": "student/final.pt",
    }
    run_stages(out, STAGES, stages, runners, done, timer, untimed=("export", "evaluate"))


if __name__ == "__main__":
    main()
