"""`nag ui`: a Gradio page that shows, side by side, the stock result, CFG with the negative, and NAG with the
negative — and the NAG report, so users can see whether NAG acted.

Safe defaults: it binds 127.0.0.1, queues at most ``queue_size`` requests, refuses prompts over
``MAX_PROMPT_CHARS`` with a clear message, and writes files only under its own output folder (Gradio's cache
included); no request can choose a path.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from nag_guidance import generation

MAX_PROMPT_CHARS = 300

HELP = {
    "scale": "How hard to push away from the negative (1 = off). Higher removes more, until images break.",
    "tau": "Cap on how much a token's attention output may grow, as a multiple of its unguided size.",
    "alpha": "How much of the guided attention output is blended in (1 = all, 0 = none).",
    "end": "Fraction of the denoising schedule (from pure noise) during which NAG acts; it matters most early.",
    "cfg_scale": "Scale of the CFG column (the negative as CFG's unconditional prompt).",
    "steps": "Denoising steps (few-step models: 1–8).",
}


class Generator:
    """Holds the loaded models (one at a time per name) and turns a page request into three images + report."""

    def __init__(self, models: list[str], out: Path, device: str = "cpu", dtype: str = "float32") -> None:
        self.models, self.out, self.device, self.dtype = models, out, device, dtype
        self.loaded: dict[str, generation.Model] = {}
        self.lock = threading.Lock()

    def model(self, name: str) -> generation.Model:
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}")
        with self.lock:
            if name not in self.loaded:
                model = None if name == generation.EMBEDDED else name
                self.loaded[name] = generation.load(model, self.device, dtype=self.dtype)
            return self.loaded[name]

    def defaults(self, name: str) -> dict[str, Any]:
        model = self.model(name)
        preset = model.preset
        return {
            "steps": preset.steps or 25,
            "scale": preset.config.scale,
            "tau": preset.config.tau,
            "alpha": preset.config.alpha,
            "end": preset.config.end,
        }

    def __call__(
        self, prompt: str, negative: str, name: str, steps: int, seed: int, scale: float, tau: float, alpha: float,
        end: float, cfg_scale: float,
    ) -> tuple[Any, Any, Any, str]:  # fmt: skip
        for label, text in (("prompt", prompt), ("negative prompt", negative)):
            if text is not None and not isinstance(text, str):
                raise ValueError(f"The {label} must be text.")
        prompt, negative = (prompt or "").strip(), (negative or "").strip()
        if not prompt:
            raise ValueError("Write a prompt first.")
        if not negative:
            raise ValueError("Write a negative prompt: it is what CFG and NAG are asked to keep out.")
        for label, text in (("prompt", prompt), ("negative prompt", negative)):
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"The {label} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}.")
        numbers = {"scale": scale, "tau": tau, "alpha": alpha, "end": end, "cfg_scale": cfg_scale}
        request = generation.Request(
            prompt=prompt, negative=negative, steps=_whole("steps", steps), seed=_whole("seed", seed),
            **{key: _number(key, value) for key, value in numbers.items()},
        )  # fmt: skip
        model = self.model(name)
        results = {method: generation.run(model, request, method) for method in generation.METHODS}
        # the second alone is not unique (equal seeds finishing in the same second); the token is, per request,
        # and save(overwrite=False) never replaces a file even then
        prefix = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-"
        for result in results.values():
            generation.save(result, self.out, prefix=prefix, overwrite=False)
        report = results["nag"].report
        verdict = "NAG acted" if report is not None and report.active else "NAG had **no effect**"
        return (*(_for_display(results[m].images[0]) for m in generation.METHODS), f"{verdict}: {report}")


def _whole(name: str, value: Any) -> int:
    """A whole number from the page (a slider or number field sends floats, the API anything JSON holds)."""
    number = _number(name, value)
    if isinstance(number, int):
        return number
    if not (math.isfinite(number) and number.is_integer()):
        raise ValueError(f"{name}={value!r} is invalid: expected a whole number")
    return int(number)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} is invalid: expected a number")
    return value


PARAMETERS = ("prompt", "negative", "name", "steps", "seed", "scale", "tau", "alpha", "end", "cfg_scale")
"""The page's inputs, in ``Generator.__call__``'s order."""


def _preprocess(components: list, payloads: tuple) -> list:
    """The page's raw values, type-checked, then preprocessed as Gradio would (bounds, choices). Gradio's own
    preprocessing is off for the call: it turns any JSON into text with ``str()``, so an API client's object ran as
    a prompt."""
    import gradio as gr

    values = []
    for name, component, payload in zip(PARAMETERS, components, payloads, strict=True):
        if payload is not None:
            if isinstance(component, (gr.Textbox, gr.Dropdown)) and not isinstance(payload, str):
                raise ValueError(f"The {component.label.lower()} must be text.")
            if isinstance(component, (gr.Slider, gr.Number)):
                _number(name, payload)
        values.append(component.preprocess(payload))
    return values


def _for_display(image, size: int = 256):
    """Small images (the embedded model makes 32×32) shown enlarged with visible pixels; the saved PNGs keep
    their size."""
    from PIL import Image

    if image.width >= size:
        return image
    factor = -(-size // image.width)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def build(
    models: list[str] | None = None,
    out: Path = Path("out/ui"),
    device: str = "cpu",
    queue_size: int = 8,
    dtype: str = "float32",
):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    models = models or [generation.EMBEDDED]
    out = generation.check_output_folder(Path(out).resolve())
    os.environ["GRADIO_TEMP_DIR"] = str(out / "gradio-cache")  # Gradio's own files stay in our folder too
    make = Generator(models, out, device, dtype)
    defaults = make.defaults(models[0])

    def run(*payloads):
        try:
            return make(*_preprocess(inputs, payloads))
        except ValueError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title="NAG: negative prompts for few-step models") as app:
        gr.Markdown(
            "# Normalized Attention Guidance\nThe same seed three ways: **stock** (prompt only), **CFG** with the "
            "negative as unconditional prompt, and **NAG** with the negative."
        )
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value="a circle", max_lines=2, elem_id="prompt")
            negative = gr.Textbox(label="Negative prompt", value="red", max_lines=2, elem_id="negative")
        with gr.Row():
            name = gr.Dropdown(models, value=models[0], label="Model", elem_id="model")
            steps = gr.Slider(1, 50, value=defaults["steps"], step=1, label="Steps", info=HELP["steps"])
            seed = gr.Number(value=0, label="Seed", minimum=0)  # no precision: 1.5 is refused, not rounded
        with gr.Row():
            scale = gr.Slider(1, 20, value=defaults["scale"], step=0.5, label="NAG scale s", info=HELP["scale"])
            tau = gr.Slider(0.5, 20, value=defaults["tau"], step=0.5, label="NAG τ (tau)", info=HELP["tau"])
            alpha = gr.Slider(0, 1, value=defaults["alpha"], step=0.05, label="NAG α (alpha)", info=HELP["alpha"])
            end = gr.Slider(0.05, 1, value=defaults["end"], step=0.05, label="NAG end", info=HELP["end"])
            cfg_scale = gr.Slider(1, 15, value=generation.DEFAULT_CFG_SCALE, step=0.5, label="CFG scale",
                                  info=HELP["cfg_scale"])  # fmt: skip
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            images = [
                gr.Image(label=label, type="pil", elem_id=f"image-{key}", format="png")
                for key, label in (("stock", "stock"), ("cfg", "CFG"), ("nag", "NAG"))
            ]
        report = gr.Markdown(elem_id="report")
        inputs = [prompt, negative, name, steps, seed, scale, tau, alpha, end, cfg_scale]
        button.click(run, inputs=inputs, outputs=[*images, report], concurrency_limit=1, preprocess=False)

        def on_model(selected):
            values = make.defaults(selected)
            return [gr.update(value=values[key]) for key in ("steps", "scale", "tau", "alpha", "end")]

        name.change(on_model, inputs=name, outputs=[steps, scale, tau, alpha, end])
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app


def check_address(host: str, port: int) -> None:
    """A ``ValueError`` that says why, unless the page can listen on ``host``:``port``: checked before any model
    loads, since Gradio's own failure comes after it, as a traceback that blames the port whatever is wrong."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as error:  # socket.gaierror is an OSError
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(f"--host {host!r} is not an address or a name this machine resolves ({reason})") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(f"--port {port} is in use on {host}: choose another --port") from None
            raise ValueError(f"--host {host!r} is not an address of this machine ({error.strerror})") from None


def launch(
    models: list[str] | None = None,
    out: Path = Path("out/ui"),
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    queue_size: int = 8,
    block: bool = True,
    dtype: str = "float32",
):
    check_address(host, port)
    app = build(models, out, device, queue_size, dtype)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True)
    return app
