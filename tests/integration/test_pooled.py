"""``pooled=``: whose pooled text vector modulates the negative branch.

"prompt" (the default) is checked against the slow reference in every joint test; here "negative", the NAG
authors' Flux / Kontext method, against the reference run their way (the negative half with its own pooled
vector, image stream modulated by the prompt half in dual-stream blocks, its own image copy in single-stream
blocks), and the refusals everywhere else."""

from __future__ import annotations

import pytest
import torch

import nag_guidance as nag
from nag_guidance.integration.families import registered_families
from nag_guidance.integration.state import NegativeText
from tests.integration.cases import CASES
from tests.integration.helpers import generate, relative_diff
from tests.integration.joint_cases import JOINT_CASES
from tests.integration.test_joint_attention import NAG, NEGATIVE, reference

FLUX_CASES = [c for c in JOINT_CASES if c.family in ("flux", "flux-kontext")]
ALL_CASES = {c.family: c for c in [*CASES, *JOINT_CASES]}  # one pipeline per family


@pytest.fixture(params=FLUX_CASES, ids=[c.id for c in FLUX_CASES])
def flux_case(request):
    return request.param


def test_negative_pooled_equals_the_authors_method(flux_case):
    pipe = nag.apply(flux_case.make())
    ours = generate(pipe, flux_case, nag={"nag_negative_prompt": NEGATIVE, "nag_pooled": "negative", **NAG})
    assert pipe.nag_report.active and pipe.nag_report.config.pooled == "negative"
    assert "pooled=negative" in str(pipe.nag_report)
    expected, ref = reference(flux_case, NEGATIVE, negative_pooled=True)
    assert ref.guided_calls > 0
    assert relative_diff(ours, expected) <= 1e-5
    prompt_pooled = generate(pipe, flux_case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    assert pipe.nag_report.config.pooled == "prompt"
    assert relative_diff(prompt_pooled, expected) > 1e-3  # a different method, measurably


def test_apply_default_and_call_argument_agree(flux_case):
    pipe = nag.apply(flux_case.make(), pooled="negative")
    by_default = generate(pipe, flux_case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    assert pipe.nag_report.config.pooled == "negative"
    by_call = generate(
        nag.apply(flux_case.make()), flux_case, nag={"nag_negative_prompt": NEGATIVE, "nag_pooled": "negative", **NAG}
    )
    assert torch.equal(by_default, by_call)
    overridden = generate(pipe, flux_case, nag={"nag_negative_prompt": NEGATIVE, "nag_pooled": "prompt", **NAG})
    assert pipe.nag_report.config.pooled == "prompt" and not torch.equal(overridden, by_default)


@pytest.mark.parametrize("which", ["shorter", "longer"])
def test_negative_embeds_of_another_length(flux_case, which):
    pipe = flux_case.make()
    short, long = flux_case.negative_lengths(pipe)
    embeds = short if which == "shorter" else long
    pooled = pipe.encode_prompt("blurry", prompt_2=None, max_sequence_length=8)[1]
    nag.apply(pipe)
    call = {"nag_negative_prompt_embeds": embeds, "nag_negative_pooled_prompt_embeds": pooled}
    guided = generate(pipe, flux_case, nag={**call, "nag_pooled": "negative", **NAG})
    assert pipe.nag_report.active
    nag.remove(pipe)
    expected, _ = reference(flux_case, (embeds, None, pooled), negative_pooled=True, pipe=pipe)
    assert relative_diff(guided, expected) <= 1e-5


def test_two_prompts_two_images_each(flux_case):
    prompts, negatives = ["a red car", "a blue cat"], ["dog", "dark blurry glasses"]
    pipe = nag.apply(flux_case.make())
    call = {flux_case.per_prompt: 2}
    guided = generate(
        pipe, flux_case, prompts, nag={"nag_negative_prompt": negatives, "nag_pooled": "negative", **NAG}, **call
    )
    assert guided.shape[0] == 4 and pipe.nag_report.active
    expected, _ = reference(flux_case, negatives, prompts, per_prompt=2, negative_pooled=True, **call)
    assert relative_diff(guided, expected) <= 1e-5


def test_outside_the_window_and_after_remove_it_is_stock(flux_case):
    pipe = flux_case.make()
    stock = generate(pipe, flux_case)
    nag.apply(pipe, pooled="negative")
    # the two steps' timesteps are far above 100: the window 50 <= t <= 100 guides none of them
    unguided = generate(pipe, flux_case, nag={"nag_negative_prompt": NEGATIVE, "nag_start": 0.9, "nag_end": 0.95})
    assert not pipe.nag_report.active and "no step fell in the window" in str(pipe.nag_report)
    assert torch.equal(unguided, stock)
    generate(pipe, flux_case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    nag.remove(pipe)
    assert torch.equal(generate(pipe, flux_case), stock)


def test_embeds_without_the_negative_pooled_vector_are_refused(flux_case):
    pipe = flux_case.make()
    embeds = flux_case.negative_lengths(pipe)[0]
    nag.apply(pipe, pooled="negative")
    with pytest.raises(ValueError, match="nag_negative_pooled_prompt_embeds"):
        pipe("a red car", nag_negative_prompt_embeds=embeds, **flux_case.kwargs())
    with pytest.raises(ValueError, match="pooled vector must have shape"):
        pipe("a red car", nag_negative_prompt_embeds=embeds, nag_negative_pooled_prompt_embeds=torch.zeros(3))
    with pytest.raises(ValueError, match="needs nag_negative_prompt_embeds"):
        pipe("a red car", nag_negative_prompt="dog", nag_negative_pooled_prompt_embeds=torch.zeros(1, 8))
    with pytest.raises(ValueError, match="pooled='sideways' is invalid"):
        pipe("a red car", nag_negative_prompt="dog", nag_pooled="sideways")


def test_denoiser_door_needs_the_pooled_vector():
    case = FLUX_CASES[0]
    pipe = case.make()
    embeds, _ = case.encode(pipe, NEGATIVE)
    handle = nag.attach(pipe.transformer, family="flux")
    config = nag.NAGConfig(scale=5, pooled="negative")
    with pytest.raises(ValueError, match="pooled vector"):
        handle.begin(embeds, config=config)
    assert not handle.active
    pooled = pipe.encode_prompt(NEGATIVE, prompt_2=None, max_sequence_length=16)[1]
    handle.begin(NegativeText(embeds, pooled=pooled), config=config)
    pipe("a red car", generator=torch.Generator().manual_seed(0), **case.kwargs())
    report = handle.end()
    handle.remove()
    assert report.active and report.config.pooled == "negative"


WITHOUT_POOLED = sorted(name for name, f in registered_families().items() if f.pooled_arg is None)
PROMPT_ONLY = sorted(
    name for name, f in registered_families().items() if f.pooled_arg is not None and f.negative_rows is None
)


def test_the_families_split_as_documented():
    no_pooled = ["sd", "pixart", "sana", "wan", "ltx", "ltx2", "chroma", "qwen-image", "flux2", "z-image"]
    no_pooled += ["wan-vace", "skyreels-v2", "wan-animate", "allegro", "latte", "sana-video", "text-to-video-sd"]
    no_pooled += ["chronoedit", "i2vgen-xl"]
    assert sorted([*no_pooled, "cogvideox", "lumina2"]) == WITHOUT_POOLED
    assert PROMPT_ONLY == ["hidream", "hunyuan-video", "sd3", "sdxl"]


@pytest.mark.parametrize("family", WITHOUT_POOLED)
@pytest.mark.parametrize("pooled", ["prompt", "negative"])
def test_refused_where_the_denoiser_takes_no_pooled_vector(family, pooled):
    pipe = ALL_CASES[family].make()
    with pytest.raises(ValueError, match="takes no pooled text vector"):
        nag.apply(pipe, pooled=pooled)
    assert not nag.is_applied(pipe)
    nag.apply(pipe)
    with pytest.raises(ValueError, match="takes no pooled text vector"):
        pipe("a red car", nag_negative_prompt="dog", nag_pooled=pooled)


@pytest.mark.parametrize("family", PROMPT_ONLY)
def test_prompt_only_families_refuse_negative_and_accept_prompt(family):
    case = ALL_CASES[family]
    pipe = case.make()
    with pytest.raises(ValueError, match="pooled='negative' is not implemented for the"):
        nag.apply(pipe, pooled="negative")
    assert not nag.is_applied(pipe)
    nag.apply(pipe)
    default = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    assert pipe.nag_report.config.pooled == "prompt"
    explicit = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, "nag_pooled": "prompt", **NAG})
    assert torch.equal(default, explicit)
