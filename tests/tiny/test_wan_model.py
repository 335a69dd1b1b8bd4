import copy

import torch
from diffusers import WanPipeline

from nag_guidance.tiny import video_data
from nag_guidance.tiny.model import build_scheduler
from nag_guidance.tiny.train import grid
from nag_guidance.tiny.wan_model import (
    CAPTION_TOKENS,
    LATENT_SHAPE,
    PIPELINE_SEQUENCE_LENGTH,
    WanText,
    build_wan_text_encoder,
    build_wan_tokenizer,
    build_wan_transformer,
    build_wan_vae,
    compact_context,
    wan_predict,
)

PROMPTS = ["a red circle moving left on a blue background", "", "a square moving", "a purple triangle standing still"]


def random_parts() -> tuple[WanText, torch.nn.Module]:
    torch.manual_seed(0)
    tokenizer = build_wan_tokenizer()
    transformer = build_wan_transformer()
    for p in transformer.parameters():  # diffusers zero-initialises the output layers
        p.data.normal_(0, 0.05)
    return WanText(tokenizer, build_wan_text_encoder(tokenizer)), transformer


def test_text_context_is_the_pipelines_at_its_default_length():
    torch.set_num_threads(1)
    text, transformer = random_parts()
    pipe = WanPipeline(
        tokenizer=text.tokenizer,
        text_encoder=text.encoder,
        vae=build_wan_vae(),
        scheduler=build_scheduler(),
        transformer=transformer,
    )
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=512)
        ours = text(PROMPTS)
    assert ours.shape == (len(PROMPTS), PIPELINE_SEQUENCE_LENGTH, 64)
    assert torch.equal(embeds, ours)


def test_compact_context_gives_the_full_contexts_velocity():
    torch.set_num_threads(1)
    text, transformer = random_parts()
    compact = WanText(text.tokenizer, text.encoder, compact=True)
    x = torch.randn(len(PROMPTS), *LATENT_SHAPE, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999.0, 600.0, 250.0, 10.0])
    with torch.no_grad():
        full = wan_predict(transformer, x, t, text(PROMPTS))
        fast = wan_predict(compact_context(copy.deepcopy(transformer)), x, t, compact(PROMPTS))
        wrong = wan_predict(transformer, x, t, compact(PROMPTS))  # the stock processor on the short context
    assert full.abs().mean() > 0.1
    assert (full - fast).abs().max() < 1e-4 < (full - wrong).abs().max()


def test_every_caption_word_is_one_token_and_captions_fit():
    tokenizer = build_wan_tokenizer()
    for word in video_data.VOCABULARY:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    longest = max((video_data.caption(video_data.VideoSpec(*q)) for q in video_data.HELD_OUT), key=len)
    assert len(tokenizer(longest + " on").input_ids) <= CAPTION_TOKENS


def test_pipeline_steps_are_the_uniform_grids_the_student_is_distilled_on():
    scheduler = build_scheduler()
    for steps in (1, 2, 4):
        scheduler.set_timesteps(steps)
        assert tuple(scheduler.sigmas.tolist()) == grid(steps)[0]
    assert [round(s, 3) for s in grid(4)[0]] == [0.999, 0.749, 0.5, 0.25, 0.0]
