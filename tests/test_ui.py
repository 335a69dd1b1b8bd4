"""The web page in a real browser: headless Debian Chromium driven by Playwright (no browser download).

Fill prompt and negative, click Generate, wait for the three images, check they differ and the NAG report is
shown; a screenshot is kept as an artifact (``$NAG_ARTIFACTS`` or runs/artifacts/ui.png). Without a browser:
the page's JSON API refuses NaN and other nonsense, and saved results never overwrite each other.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

CHROMIUM = os.environ.get("NAG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists() and os.environ.get("NAG_REQUIRE_BROWSER"):  # CI: the browser test must run
    raise RuntimeError(f"NAG_REQUIRE_BROWSER is set but Chromium is not at {CHROMIUM}")
needs_browser = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"Chromium not found at {CHROMIUM} (install Debian's chromium package; .ci/run does)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from nag_guidance import ui

    out = tmp_path_factory.mktemp("ui")
    port = free_port()
    app = ui.launch(out=out, port=port, block=False)
    yield f"http://127.0.0.1:{port}", out
    app.close()


@needs_browser
def test_page_generates_three_different_images_and_the_report(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, out = server
    artifacts = Path(os.environ.get("NAG_ARTIFACTS", "runs/artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#prompt textarea").fill("a circle")
        page.locator("#negative textarea").fill("red")
        page.locator("#generate").click()
        digests = []
        for key in ("stock", "cfg", "nag"):
            image = page.locator(f"#image-{key} img")
            image.wait_for(state="visible", timeout=120_000)
            data = page.request.get(image.get_attribute("src")).body()
            pixels = Image.open(io.BytesIO(data)).convert("RGB")
            digests.append(hashlib.sha256(pixels.tobytes()).hexdigest())
        report = page.locator("#report")
        report.wait_for(state="visible")
        text = report.inner_text()
        page.screenshot(path=str(artifacts / "ui.png"), full_page=True)
        browser.close()
    assert len(set(digests)) == 3, "stock, CFG and NAG gave identical images"
    assert "NAG acted" in text and "layers" in text
    written = list(out.glob("*.png"))
    assert len(written) >= 3 and all(p.resolve().is_relative_to(out.resolve()) for p in written)


VALID = ["a circle", "red", "embedded", 1, 0, 5.0, 2.5, 0.5, 1.0, 5.0]
"""prompt, negative, model, steps, seed, scale, tau, alpha, end, cfg_scale: what the page's "run" call takes."""


def _call(url: str, data_json: str) -> str:
    """POST the page's own JSON API (as the browser or any client would) and return the event stream."""
    headers = {"content-type": "application/json"}
    started = httpx.post(f"{url}/gradio_api/call/run", content=f'{{"data": {data_json}}}', headers=headers)
    started.raise_for_status()
    return httpx.get(f"{url}/gradio_api/call/run/{started.json()['event_id']}", timeout=120).text


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (9, "NaN", "cfg_scale=nan"),  # NaN passes the slider's bounds check (comparisons are false); ours refuses it
        (9, "Infinity", ""),  # the slider's bounds check refuses these
        (5, "NaN", "scale=nan"),
        (5, "-Infinity", ""),
        (6, "NaN", "tau=nan"),
        (7, "NaN", "alpha=nan"),
        (8, "NaN", "end=nan"),
        (3, "NaN", ""),  # rejected: by the slider's bounds check or by ours
        (3, "2.5", "steps=2.5"),
        (3, "null", ""),
        (3, '"4"', ""),
        (4, "1e300", "seed="),
        (4, "-1", ""),
        (4, "1.5", "seed=1.5"),  # Gradio's number field rounded it to 2
        (4, "true", "seed=True"),
        (0, '{"text": "a circle"}', "The prompt must be text"),  # Gradio's text box ran it as its str()
        (0, '["a circle"]', "The prompt must be text"),
        (0, "5", "The prompt must be text"),
        (1, '{"text": "red"}', "The negative prompt must be text"),
        (2, '{"name": "embedded"}', "The model must be text"),
    ],
)
def test_page_json_refuses_nonsense_with_a_clear_message(server, position, value, message):
    data = [json.dumps(v) for v in VALID]
    data[position] = value
    events = _call(server[0], "[" + ", ".join(data) + "]")
    assert "event: error" in events, events
    assert message in events, events


def test_equal_seed_results_in_the_same_second_never_overwrite(tmp_path, monkeypatch):
    from nag_guidance import ui

    monkeypatch.setattr(ui.time, "strftime", lambda *_: "20250101-000000")  # all in the same second
    generator = ui.Generator(["embedded"], tmp_path)
    for _ in range(3):
        generator("a circle", "red", "embedded", 1, 0, 5.0, 2.5, 0.5, 1.0, 5.0)
    written = sorted(tmp_path.glob("*.png"))
    assert len(written) == 9  # before: 3, each request overwrote the previous one's
    assert len({p.read_bytes() for p in written if "-nag-" in p.name}) == 1  # same seed, same image, 3 files


def test_overlong_prompt_is_refused_with_a_clear_message(tmp_path):
    from nag_guidance import ui

    generator = ui.Generator(["embedded"], tmp_path)
    with pytest.raises(ValueError, match="limit is 300"):
        generator("x" * 301, "red", "embedded", 4, 0, 5.0, 10.0, 0.5, 1.0, 5.0)
    with pytest.raises(ValueError, match="negative prompt"):
        generator("a circle", " ", "embedded", 4, 0, 5.0, 10.0, 0.5, 1.0, 5.0)
