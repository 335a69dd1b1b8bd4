"""The `nag` command line: generate, eval, bench, ui, presets, families, version.

Heavy imports (diffusers, the model) happen inside the commands, so `nag --help` stays instant. User errors
(bad arguments, unloadable models, an unusable --out or --device, running out of memory) print one clear line
and exit with status 2, never a traceback wall; arguments are checked before the model is loaded.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nag_guidance import __version__
from nag_guidance.eval.seeds import REPORTING_SEED_START, TUNING_SEED_START
from nag_guidance.files import save_png, write_text_atomically

app = typer.Typer(
    help="Normalized Attention Guidance (NAG) for diffusers pipelines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, even in a narrow terminal
    raise typer.Exit(2)


def quiet_libraries() -> None:
    """Library chatter (deprecations, optional-dependency notes such as transformers' torchvision ones) would
    bury the command's own output. Cheap: the libraries read these variables when they are imported. Only the
    CLI does this; importing the library changes no logging."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="tiny-flux: call this pipeline")  # the CLI passes that length


def quiet_model_loading() -> None:
    """diffusers' "Loading pipeline components" and transformers' "Loading weights" bars go (the command shows
    its own progress), and both libraries' loggers get the level of ``quiet_libraries`` (or the user's own
    ``DIFFUSERS_VERBOSITY`` / ``TRANSFORMERS_VERBOSITY``) even when something imported them earlier. Imports
    both libraries, so only commands that load models call it; downloads from the Hub keep their progress bars
    (they can take minutes)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
    for module, variable in (
        (diffusers_logging, "DIFFUSERS_VERBOSITY"),
        (transformers_logging, "TRANSFORMERS_VERBOSITY"),
    ):
        module.set_verbosity(levels.get(os.environ.get(variable, "error").lower(), levels["error"]))
        module.disable_progress_bar()


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix, as one line: bad values, unloadable models, not enough memory or disk space."""
    import torch

    from nag_guidance import generation

    out_of_memory = (torch.cuda.OutOfMemoryError, MemoryError)
    try:
        yield
    except typer.Exit:  # fail() inside the block (click's Exit is a RuntimeError)
        raise
    except (ValueError, generation.ModelLoadError) as error:
        fail(str(error))
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        fail(f"cannot write {error.filename or 'the output'}: {error.strerror or 'the disk is full'} (nothing partial "
             "was left under that name); free some space or choose another --out")  # fmt: skip
    except (*out_of_memory, RuntimeError) as error:
        text = str(error)
        if not isinstance(error, out_of_memory) and "allocate memory" not in text:
            raise
        first = (text.strip().splitlines() or [type(error).__name__])[0]
        fail(f"out of memory ({first[:200]}): try fewer --num-images, a smaller size, or another --device")


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """The package's own warnings (a skipped manifest line) as one ``warning:`` line each, not Python's form with
    a source line; every other warning is shown as before."""
    from rich.markup import escape

    from nag_guidance.batch import ManifestWarning

    with warnings.catch_warnings():
        show = warnings.showwarning

        def show_ours(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, ManifestWarning):
                console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_ours
        yield


@app.callback()
def _root() -> None:
    """Normalized Attention Guidance (NAG) for diffusers pipelines."""
    quiet_libraries()


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


@app.command()
def presets() -> None:
    """Print the presets table (the defaults of every family)."""
    from nag_guidance.config import presets_markdown

    typer.echo(presets_markdown())


@app.command()
def families() -> None:
    """List the guided diffusers pipelines by architecture family (tested ones first; see docs/coverage.md)."""
    from nag_guidance.integration import supported_pipelines

    for name, pipelines in supported_pipelines().items():
        typer.echo(f"{name}: {', '.join(pipelines)}")


Opt = typer.Option


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to draw (omit with --prompts).")] = None,
    negative: Annotated[str | None, Opt("--negative", "-n", help="What to keep out (the NAG negative).")] = None,
    steps: Annotated[int | None, Opt(help="Denoising steps, 1 to 1000 (default: the model's preset).")] = None,
    num_images: Annotated[
        int, Opt("--num-images", "-k", help="Images per prompt, 1 to 1000: seeds seed, seed+1, ...")
    ] = 1,
    seed: Annotated[int, Opt(help="Seed of the first image, 0 to 2^63-1.")] = 0,
    out: Annotated[Path, Opt(help="Output folder (created; checked for writing before any work).")] = Path("out"),
    model: Annotated[
        str | None,
        Opt(help="tiny (default), tiny-flux or tiny-wan (video): an embedded model; else a diffusers id or folder."),
    ] = None,
    grid: Annotated[
        bool, Opt(help="Also run stock and CFG; write grid.png (video: grid.webp): stock | CFG | NAG.")
    ] = False,
    method: Annotated[str | None, Opt(help="stock, cfg or nag (default: nag with a negative, else stock).")] = None,
    scale: Annotated[float | None, Opt(help="NAG scale s ≥ 1, finite (1 = off; the paper's φ = s − 1).")] = None,
    tau: Annotated[
        float | None, Opt(help="NAG τ > 0: how far a token's attention output may grow (inf: no cap).")
    ] = None,
    alpha: Annotated[float | None, Opt(help="NAG α in [0, 1]: how much of the guided output is blended in.")] = None,
    start: Annotated[float | None, Opt(help="Fraction of the schedule where NAG starts, in [0, 1).")] = None,
    end: Annotated[float | None, Opt(help="Fraction of the schedule where NAG stops, in (start, 1].")] = None,
    window: Annotated[
        str | None, Opt(help="Units of --start/--end: schedule (the NAG authors', default) or steps.")
    ] = None,
    pooled: Annotated[
        str | None,
        Opt(help="Flux / Kontext: whose pooled vector modulates the negative branch, prompt (default) or negative."),
    ] = None,
    preset: Annotated[str | None, Opt(help="Row of the presets table (see `nag presets`).")] = None,
    guidance: Annotated[
        float | None, Opt(help="The model's own guidance scale, finite, ≥ 0 (default: its preset).")
    ] = None,
    cfg_scale: Annotated[float, Opt(help="Scale of the CFG method (--grid / --method cfg), finite, ≥ 1.")] = 5.0,
    height: Annotated[
        int | None, Opt(help="Image height: a multiple of 8, at most 4096 (default: the model's).")
    ] = None,
    width: Annotated[int | None, Opt(help="Image width: a multiple of 8, at most 4096 (default: the model's).")] = None,
    num_frames: Annotated[
        int | None, Opt("--num-frames", help="Video models: frames per clip (default: the model's).")
    ] = None,
    device: Annotated[str, Opt(help="torch device: cpu, cuda, cuda:1, mps... (checked before loading)")] = "cpu",
    dtype: Annotated[str, Opt(help="float32, float16 or bfloat16.")] = "float32",
    prompts: Annotated[Path | None, Opt(help="Text file of prompts, one per line: a (distributed) batch.")] = None,
) -> None:
    """Generate images with NAG (with --grid, also stock and CFG side by side); PNGs carry their parameters (video
    models: animated WebPs)."""
    from nag_guidance import generation

    settings = dict(
        negative=negative, steps=steps, num_images=num_images, seed=seed, scale=scale, tau=tau, alpha=alpha,
        start=start, end=end, window=window, pooled=pooled, guidance=guidance, cfg_scale=cfg_scale, height=height,
        width=width, num_frames=num_frames,
    )  # fmt: skip
    if prompts is not None:
        if prompt is not None or grid:
            fail("--prompts runs a batch: give no prompt argument and no --grid")
        _batch(prompts, out, model, method, settings, device, dtype, preset)
        return
    if prompt is None:
        fail("give a prompt (or --prompts FILE)")
    methods = ["stock", "cfg", "nag"] if grid else [method or ("nag" if negative else "stock")]
    with user_errors():
        request = generation.Request(prompt=prompt, **settings)
        for name in methods:
            if name not in generation.METHODS:
                raise ValueError(f"method {name!r} is unknown; allowed: {', '.join(generation.METHODS)}")
            if name != "stock" and not negative:
                raise ValueError(f"--method {name} and --grid need --negative")
        generation.check_device(device)
        generation.check_output_folder(out)
        quiet_model_loading()
        with console.status("loading the model…"):
            loaded = generation.load(model, device=device, dtype=dtype, preset=preset)
        results = {}
        with _progress() as bar:
            for name in methods:
                task = bar.add_task(name, total=request.steps or loaded.preset.steps or 25)
                update = lambda done, total, t=task: bar.update(t, completed=done)  # noqa: E731
                results[name] = generation.run(loaded, request, name, progress=update)
                bar.update(task, completed=bar.tasks[task].total)
    written = []
    with user_errors():
        for result in results.values():
            written += generation.save(result, out)
        if grid:
            names = {"stock": "stock", "CFG": "cfg", "NAG": "nag"}
            if results["stock"].videos:
                strips = generation.video_grid({k: results[m].videos for k, m in names.items()})
                generation.save_webp(strips, out / "grid.webp")
                written.append(out / "grid.webp")
            else:
                save_png(generation.grid({k: results[m].images for k, m in names.items()}), out / "grid.png")
                written.append(out / "grid.png")
    for result in results.values():
        if result.report is not None:
            console.print(f"[dim]{result.report}[/]", soft_wrap=True)
    console.print(f"wrote {len(written)} file(s) to {out}/")


def _batch(prompts: Path, out: Path, model, method, settings: dict, device: str, dtype: str, preset) -> None:
    from nag_guidance.batch import run_batch

    quiet_model_loading()
    with user_errors(), warnings_as_lines():
        summary = run_batch(prompts, out, model, method, settings, device=device, dtype=dtype, preset=preset)
    if summary["rank"] == 0:
        console.print(
            f"{summary['items']} prompt(s): {summary['already_done']} already done, the rest split over "
            f"{summary['processes']} process(es); {summary['seconds']} s; manifest: {out / 'manifest.jsonl'}"
        )


@app.command()
def ui(
    model: Annotated[list[str] | None, Opt(help="Model(s) to offer (default: the embedded one); repeatable.")] = None,
    host: Annotated[str, Opt(help="Address to bind; 127.0.0.1 keeps the page private to this machine.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port.", min=1, max=65535)] = 7860,
    out: Annotated[Path, Opt(help="The only folder the page writes to.")] = Path("out/ui"),
    queue_size: Annotated[int, Opt(help="Most requests waiting at once; more are refused.", min=1)] = 8,
    device: Annotated[str, Opt(help="torch device.")] = "cpu",
    dtype: Annotated[str, Opt(help="float32, float16 or bfloat16.")] = "float32",
) -> None:
    """Web page: prompt and negative in, stock | CFG | NAG out, with the NAG report."""
    from nag_guidance import generation

    try:
        import gradio  # noqa: F401

        from nag_guidance.ui import check_address, launch
    except ImportError:
        fail('the web page needs Gradio: pip install "nag-guidance[ui]"')

    with user_errors():
        generation.check_device(device)
        generation.check_output_folder(out)
        check_address(host, port)
    if host not in ("127.0.0.1", "localhost"):
        console.print(f"[yellow]warning:[/] binding {host}: anyone who can reach this machine can use the page")
    quiet_model_loading()
    with user_errors():
        launch(model, out=out, host=host, port=port, device=device, queue_size=queue_size, dtype=dtype)


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    quick: Annotated[bool, Opt(help="A few seconds: one kind, few pairs and seeds, 1 step (for CI).")] = False,
    out: Annotated[Path, Opt(help="Run folder (resumable: finished items are skipped).")] = Path("runs/eval"),
    kinds: Annotated[
        str | None,
        Opt(
            help="Comma-separated pair kinds: colour, shape, background, colour-bg (the sweeps' core kinds), multi, "
            "conjunctive, contrast, empty (default: all; quick: colour)."
        ),
    ] = None,
    seeds: Annotated[int, Opt(help="Samples per prompt/negative pair and condition.", min=1, max=1000)] = 32,
    seed_start: Annotated[
        int,
        Opt(
            help=f"First seed. Default {REPORTING_SEED_START}, the reporting range: the sweeps that chose the "
            f"presets use seeds {TUNING_SEED_START}-{REPORTING_SEED_START - 1}, so a results page never reports on "
            "the seeds it was tuned on.",
            min=0,
        ),
    ] = REPORTING_SEED_START,
    docs: Annotated[Path | None, Opt(help="Also write the results page and figures into this folder.")] = None,
    device: Annotated[str, Opt(help="torch device.")] = "cpu",
    model: Annotated[
        str | None,
        Opt(help="tiny (default) or tiny-flux: an embedded model; else a diffusers model (needs --clip-model)."),
    ] = None,
    clip_model: Annotated[Path | None, Opt(help="Local CLIP checkpoint folder for --model scores.")] = None,
    pairs: Annotated[Path | None, Opt(help="File of 'prompt<TAB>negative' lines for --model.")] = None,
    steps: Annotated[
        int | None,
        Opt(
            help="Steps for --model, 1 to 1000 (default: its preset); on an embedded model, only its conditions "
            "with that many student steps (1, 2 or 4).",
            min=1,
            max=1000,
        ),
    ] = None,
    compare: Annotated[
        bool, Opt(help="Embedded models: the method comparison only (no parameter sweeps, no 25-step teacher).")
    ] = False,
) -> None:
    """Measure NAG vs CFG vs nothing: on the embedded model (suppression, adherence, collapse, fidelity), or on
    your --model with local CLIP scores."""
    from nag_guidance import generation
    from nag_guidance.eval import report, runner
    from nag_guidance.eval.suite import ALL_KINDS, check_kinds
    from nag_guidance.tiny.loading import MODELS

    embedded = model or "tiny"
    if embedded == "tiny-wan" and clip_model is None:
        fail("nag eval measures the image models (tiny, tiny-flux); the video model tiny-wan has no eval suite yet")
    own_model = embedded not in MODELS or clip_model is not None
    if own_model and (model is None or clip_model is None or pairs is None):
        fail(
            "evaluating your own model needs --model, --clip-model (a local CLIP folder) and --pairs; the embedded "
            "models need none of them: --model tiny or --model tiny-flux"
        )
    if kinds is None:
        kinds = "colour" if quick else ",".join(ALL_KINDS)
    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    with user_errors():
        if not own_model:
            check_kinds(kind_list)
        generation.check_device(device)
        generation.check_output_folder(out)
        if docs is not None:
            generation.check_output_folder(docs, "--docs")
    quiet_model_loading()
    if own_model:
        _user_eval(model, clip_model, pairs, out, seeds, device, steps)
        return

    with user_errors(), warnings_as_lines(), _progress() as bar:
        task = bar.add_task("eval", total=None)
        records = runner.run(
            out, quick=quick, kinds=kind_list, seeds=seeds, device=device, model=embedded, seed_start=seed_start,
            compare=compare, steps=steps,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    from nag_guidance.batch import process_state

    if not process_state(device).is_main_process:
        return  # under torchrun / accelerate launch the main process writes the tables and the page
    with user_errors():  # a full disk while writing the pages is one line too
        records = runner.with_suppression(records)
        report.write_tables(records, out)
        figures_dir = docs if docs is not None else out
        prefix = "" if embedded == "tiny" else f"{embedded}-"  # both models' pages can live in one docs folder
        figures = {"suppression vs fidelity": f"{prefix}eval-suppression-fidelity.png"}
        report.plot(records, figures_dir / figures["suppression vs fidelity"])
        for unet, steps in sorted({(r["condition"]["unet"], r["condition"]["steps"]) for r in records}):
            name = f"{prefix}eval-grid-{unet}-{steps}.png"
            report.image_grid(records, out / "samples", figures_dir / name, unet, steps, kind_list[0])
            figures[f"{kind_list[0]}: {unet}, {steps} steps"] = name
        page = report.markdown(records, _command_line(ctx), figures)
        write_text_atomically(out / "results.md", page)
        if docs is not None:
            write_text_atomically(docs / f"{prefix}results.md", page)
    console.print(f"{len(records)} condition(s) measured; tables in {out}/results.csv and results.md")


def _user_eval(model, clip_model, pairs, out: Path, seeds: int, device: str, steps) -> None:
    from nag_guidance.eval import user

    with user_errors():
        summary = user.run(model, clip_model, pairs, out, seeds=seeds, device=device, steps=steps)
    for method, values in summary.items():
        console.print(
            f"{method:>5}: CLIP prompt {values['clip_prompt']:.2f}, CLIP negative {values['clip_negative']:.2f} "
            f"({values['samples']} samples)"
        )


@app.command()
def bench(
    ctx: typer.Context,
    quick: Annotated[bool, Opt(help="Seconds: tiny configs, few repeats (for CI).")] = False,
    out: Annotated[Path, Opt(help="Folder for benchmarks.json and benchmarks.md.")] = Path("runs/bench"),
    docs: Annotated[Path | None, Opt(help="Also write benchmarks.md into this folder.")] = None,
    device: Annotated[str, Opt(help="torch device.")] = "cpu",
    families: Annotated[str | None, Opt("--families", help="Comma-separated families (default: all).")] = None,
    realistic: Annotated[bool, Opt(help="Also time realistic token counts at reduced width.")] = True,
    full_size: Annotated[
        bool,
        Opt(
            "--full-size",
            help="Only the full-size FLUX.1-dev, SD3.5-large, SDXL and Wan 2.1 1.3B denoisers, random weights made "
            "on --device (a GPU: 12B parameters for FLUX); with --quick the same four scaled down, for a CPU check.",
        ),
    ] = False,
) -> None:
    """Time the NAG combine operator and the denoiser step: none, CFG, NAG, NAG with an early end."""
    from nag_guidance import generation
    from nag_guidance.bench import run as bench_run

    chosen = tuple(f.strip() for f in families.split(",")) if families else None
    command = _command_line(ctx)
    with user_errors():
        generation.check_device(device)
        generation.check_output_folder(out)
        if docs is not None:
            generation.check_output_folder(docs, "--docs")
        page = bench_run.run(out, quick=quick, device=device, families=chosen, realistic=realistic and not quick,
                             full_size=full_size, command=command, log=console.print)  # fmt: skip
        if docs is not None:
            docs.mkdir(parents=True, exist_ok=True)
            write_text_atomically(docs / "benchmarks.md", page)
    console.print(f"wrote {out}/benchmarks.json and benchmarks.md")


def _command_line(ctx: typer.Context) -> str:
    """The command as the user would type it: `nag <command>` and every option that differs from its default."""
    import shlex

    parts = ["nag", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value == param.default or value is None or not param.opts:
            continue
        if isinstance(value, bool):
            parts.append(param.opts[0] if value else (param.secondary_opts or [param.opts[0]])[0])
        else:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                parts += [param.opts[0], shlex.quote(str(item))]
    return " ".join(parts)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def main() -> None:
    app()
