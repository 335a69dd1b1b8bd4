"""Training recipe of the second embedded model, one command: ``python -m nag_guidance.tiny.flux_train --out
runs/tiny-flux``.

The same idea as the SD recipe (``train.py``, whose stage functions this module drives through a ``Flow``),
for a ``FluxTransformer2DModel`` on the SD model's shipped VAE (loaded from the verified weights, not retrained):

1. ``teacher``: CLIP + T5 text encoders and the transformer trained jointly as a rectified flow (v = ε − x0 at
   x_σ = (1−σ)x0 + σε, transformer timestep σ), with the data's empty captions as caption dropout.
2. ``trajectories``: the teacher's guided ODE from fresh noise on the pipeline's 16-step grid, keeping the
   states on the 4-step grid.
3. ``student``: the few-step transformer, trained to predict the coupled endpoint from teacher, straight-line
   and own-rollout states on the uniform 1/2/4-step grid.
4. ``export``: the weights into ``tiny/weights/flux`` (fp16 where harmless) with a sha256 manifest.
5. ``evaluate``: the exported pipeline measured with the analytic checker (``<out>/eval.json``).

Seeded and resumable like ``train.py``; stage wall times go to ``<out>/times.json``. ``--quick`` is a tiny
recipe (a few steps, small batches) for smoke tests.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from nag_guidance.tiny import data
from nag_guidance.tiny.flux_model import (
    build_flux_scheduler,
    build_t5_encoder,
    build_t5_tokenizer,
    build_transformer,
    image_ids,
    pack,
    text_ids,
    unpack,
)
from nag_guidance.tiny.model import build_text_encoder, build_tokenizer, parameter_count
from nag_guidance.tiny.train import (
    GOVERNOR,
    Captions,
    Flow,
    FlowRecipe,
    StageTimer,
    distil_student,
    fit_teacher,
    log,
    run_stages,
    sample_trajectories,
    save_atomic,
    selected_stages,
    stage_arguments,
    start_run,
    storage_effect,
)

STAGES: tuple[str, ...] = ("teacher", "trajectories", "student", "export", "evaluate")


@dataclass(frozen=True)
class FluxRecipe(FlowRecipe):
    """Every knob of the tiny-flux run (in ``<out>/recipe.json`` and the exported ``metadata.json``): the SD
    recipe's teacher, trajectory and student settings, with a longer teacher run, fewer trajectories and much
    stronger guidance in them (a transformer teacher follows shapes less well than the SD one: the first, width-96
    one reached 58 % without CFG, 88 % with CFG 7 and peaked near 92 % at CFG 10; docs/tiny-flux.md)."""

    teacher_steps: int = 5500
    trajectory_count: int = 4096
    trajectory_guidance: float = 10.0

    @classmethod
    def quick(cls) -> FluxRecipe:
        """A few steps with small batches: exercises every stage in seconds (tests, smoke runs)."""
        return replace(
            cls(),
            teacher_steps=3,
            teacher_batch=8,
            trajectory_steps=4,
            trajectory_count=16,
            trajectory_batch=8,
            student_steps=3,
            student_batch=8,
            save_every=2,
        )


@functools.lru_cache
def flux_grid(steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Sigmas (ending in 0) and transformer timesteps of ``FluxPipeline``'s ``steps``-step grid, computed as the
    pipeline does (sigmas ``linspace(1, 1/steps, steps)``; the transformer gets the scheduler's timestep / 1000)."""
    scheduler = build_flux_scheduler()
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    return tuple(scheduler.sigmas.tolist()), tuple((scheduler.timesteps / 1000).tolist())


def flux_predict(
    transformer: FluxTransformer2DModel, x: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Velocity at latents ``x`` (N, 4, 16, 16); ``cond`` = (T5 token embeddings, CLIP pooled output)."""
    embeds, pooled = cond
    tokens = transformer(
        hidden_states=pack(x),
        timestep=t,
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=text_ids(),
        img_ids=image_ids(),
        return_dict=False,
    )[0]
    return unpack(tokens)


FLUX_FLOW = Flow(predict=flux_predict, timestep_scale=1.0, grid=flux_grid)


class FluxText:
    """Captions → (T5 token embeddings, CLIP pooled output), tokenized exactly as ``FluxPipeline`` does."""

    def __init__(self, tokenizers: tuple[CLIPTokenizer, T5Tokenizer], encoders: tuple[CLIPTextModel, T5EncoderModel]):
        self.tokenizers = tokenizers
        self.captions = (Captions(tokenizers[0]), Captions(tokenizers[1]))
        self.clip, self.t5 = encoders

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.clip(self.captions[0].ids(texts)).pooler_output
        return self.t5(self.captions[1].ids(texts))[0], pooled


def ensure_vae(out: Path) -> AutoencoderKL:
    """The SD model's shipped VAE (verified), copied once into ``<out>/vae/final.pt`` so that later stages and
    the export use the very VAE the flow was trained on."""
    from nag_guidance.tiny.loading import PIPELINE_DIR, verify_weights, weights_path
    from nag_guidance.tiny.train import load_vae

    target = out / "vae" / "final.pt"
    if not target.exists():
        verify_weights()
        vae = AutoencoderKL.from_pretrained(weights_path() / PIPELINE_DIR / "vae").float()
        target.parent.mkdir(parents=True, exist_ok=True)
        save_atomic({"vae": vae.state_dict(), "scaling_factor": vae.config.scaling_factor}, target)
    vae = load_vae(out, "vae")
    vae.register_to_config(shift_factor=0.0)  # Flux decodes latents / scaling_factor + shift_factor
    return vae


def build_text_side() -> tuple[tuple[CLIPTokenizer, T5Tokenizer], tuple[CLIPTextModel, T5EncoderModel]]:
    tokenizers = (build_tokenizer(), build_t5_tokenizer())
    return tokenizers, (build_text_encoder(tokenizers[0]), build_t5_encoder(tokenizers[1]))


def train_flux_teacher(out: Path, recipe: FluxRecipe, timer: StageTimer) -> None:
    vae = ensure_vae(out)
    torch.manual_seed(recipe.seed)
    tokenizers, (clip, t5) = build_text_side()
    transformer = build_transformer(clip.config.hidden_size)
    trained = {"text_encoder": clip, "text_encoder_2": t5, "transformer": transformer}
    fit_teacher(out, recipe, timer, vae, FLUX_FLOW, FluxText(tokenizers, (clip, t5)), trained, "transformer")


def load_flux_teacher(out: Path) -> tuple[FluxText, dict[str, torch.nn.Module]]:
    """The teacher's text side (frozen) and its modules by name (text_encoder, text_encoder_2, transformer)."""
    state = torch.load(out / "teacher" / "final.pt", weights_only=True)
    tokenizers, (clip, t5) = build_text_side()
    modules = {"text_encoder": clip, "text_encoder_2": t5, "transformer": build_transformer(clip.config.hidden_size)}
    for name, module in modules.items():
        module.load_state_dict(state[name])
        module.eval().requires_grad_(False)
    return FluxText(tokenizers, (clip, t5)), modules


def load_flux_student(out: Path) -> FluxTransformer2DModel:
    student = build_transformer(build_text_encoder(build_tokenizer()).config.hidden_size)
    student.load_state_dict(torch.load(out / "student" / "final.pt", weights_only=True)["transformer"])
    return student.eval().requires_grad_(False)


def make_flux_trajectories(out: Path, recipe: FluxRecipe, timer: StageTimer) -> None:
    text, modules = load_flux_teacher(out)
    sample_trajectories(out, recipe, timer, FLUX_FLOW, modules["transformer"], text)


def train_flux_student(out: Path, recipe: FluxRecipe, timer: StageTimer) -> None:
    text, modules = load_flux_teacher(out)
    ema = distil_student(out, recipe, timer, FLUX_FLOW, modules["transformer"], text)
    save_atomic({"transformer": ema.state_dict()}, out / "student" / "final.pt")


def export_flux(out: Path, recipe: FluxRecipe, timer: StageTimer, export_dir: Path) -> None:
    from nag_guidance.tiny.loading import write_flux_weights

    text, modules = load_flux_teacher(out)
    student = load_flux_student(out)
    vae = ensure_vae(out)
    encoders = (modules["text_encoder"], modules["text_encoder_2"])
    counted = {"student": student, "teacher": modules["transformer"], "vae": vae}
    counted |= {"text_encoder": encoders[0], "text_encoder_2": encoders[1]}
    metadata = {
        "model": "tiny-flux",
        "recipe": asdict(recipe),
        "stage_seconds": timer.times,
        "parameters": {name: parameter_count(module) for name, module in counted.items()},
        "vae": "the tiny SD model's VAE (tiny/weights/pipeline/vae), shift_factor 0",
    }
    write_flux_weights(export_dir, text.tokenizers, encoders, vae, student, modules["transformer"], metadata)
    log(f"export: wrote {export_dir}")


def prompted(pipe: FluxPipeline, true_cfg_scale: float = 1.0) -> Callable[..., object]:
    """``pipe`` with the arguments the tiny-flux model needs fixed (32 px, its T5 length), and with true CFG
    against the empty prompt when ``true_cfg_scale`` > 1: a drop-in for the SD pipelines ``evaluate`` drives."""
    from nag_guidance.tiny.loading import FLUX_MAX_SEQUENCE_LENGTH

    def call(prompts: list[str], **kwargs: object) -> object:
        GOVERNOR.update()  # one thread while other work competes for the CPU (see train.ThreadGovernor)
        if true_cfg_scale > 1:
            kwargs |= {"true_cfg_scale": true_cfg_scale, "negative_prompt": [""] * len(prompts)}
        size = data.IMAGE_SIZE
        return pipe(prompts, height=size, width=size, max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH, **kwargs)

    return call


def flux_report(out: Path, export_dir: Path) -> dict[str, object]:
    """The SD model's measurements (``evaluate.py``) for the exported tiny-flux pipelines; the Fréchet features
    are the SD model's shipped feature network."""
    from nag_guidance.tiny.evaluate import adherence, colour_spread, real_images
    from nag_guidance.tiny.features import extract_features, frechet_distance
    from nag_guidance.tiny.loading import TEACHER_STEPS, load_feature_net, load_flux_pipeline

    student = load_flux_pipeline(path=export_dir)
    teacher = load_flux_pipeline(path=export_dir, transformer="teacher", verify=False)
    net = load_feature_net()
    real = extract_features(net, real_images([spec for _, spec in data.held_out_captions() for _ in range(32)]))
    runs = [("student", student, steps, 1.0) for steps in (1, 2, 4)]
    runs += [("teacher", teacher, 4, 1.0), ("teacher", teacher, TEACHER_STEPS, 1.0)]
    runs += [("teacher", teacher, TEACHER_STEPS, 3.0)]
    report: dict[str, object] = {}
    for name, pipe, steps, cfg in runs:
        summary, images = adherence(prompted(pipe, cfg), steps)
        summary["frechet"] = frechet_distance(extract_features(net, images), real)
        key = f"{name}_{steps}_steps" + (f"_cfg{cfg:g}" if cfg > 1 else "")
        report[key] = summary
        log(f"{key}: {json.dumps(summary)}")
    for prompt in ("a circle", "a square", "a triangle"):
        report[f"spread {prompt}"] = colour_spread(prompted(student), prompt)
        log(f"spread {prompt}: {json.dumps(report[f'spread {prompt}'])}")
    text, modules = load_flux_teacher(out)
    full = FluxPipeline(
        scheduler=build_flux_scheduler(),
        vae=ensure_vae(out),
        text_encoder=modules["text_encoder"],
        tokenizer=text.tokenizers[0],
        text_encoder_2=modules["text_encoder_2"],
        tokenizer_2=text.tokenizers[1],
        transformer=load_flux_student(out),
    )
    full.set_progress_bar_config(disable=True)
    report["fp16_storage"] = storage_effect(prompted(full), prompted(student))
    log(f"fp16 storage: {report['fp16_storage']}")
    return report


def evaluate_flux(out: Path, export_dir: Path, grid_path: Path | None) -> None:
    from nag_guidance.tiny.evaluate import render_sample_grid
    from nag_guidance.tiny.loading import load_flux_pipeline

    report = flux_report(out, export_dir)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    if grid_path is not None:
        render_sample_grid(prompted(load_flux_pipeline(path=export_dir)), grid_path)
        log(f"evaluate: sample grid → {grid_path}")


def main(argv: list[str] | None = None) -> None:
    from nag_guidance.tiny.loading import flux_weights_path

    parser = stage_arguments(__doc__.split("\n")[0], STAGES, "runs/tiny-flux")
    parser.add_argument("--quick", action="store_true", help="a tiny recipe (smoke tests)")
    args = parser.parse_args(argv)
    stages = selected_stages(parser, args, STAGES)
    recipe = FluxRecipe.quick() if args.quick else FluxRecipe()
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    out: Path = args.out
    timer = start_run(out, recipe)
    export_dir = args.export_dir or flux_weights_path()
    runners: dict[str, Callable[[], None]] = {
        "teacher": lambda: train_flux_teacher(out, recipe, timer),
        "trajectories": lambda: make_flux_trajectories(out, recipe, timer),
        "student": lambda: train_flux_student(out, recipe, timer),
        "export": lambda: export_flux(out, recipe, timer, export_dir),
        "evaluate": lambda: evaluate_flux(out, export_dir, args.grid),
    }
    done = {"teacher": "teacher/final.pt", "student": "student/final.pt"}
    run_stages(out, STAGES, stages, runners, done, timer, untimed=("export", "evaluate"))


if __name__ == "__main__":
    main()
