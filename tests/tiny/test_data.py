import numpy as np
import pytest

from nag_guidance.tiny import data


def test_training_batch_depends_only_on_seed_and_step():
    a_images, a_samples, a_captions = data.training_batch(7, 3, 16)
    b_images, b_samples, b_captions = data.training_batch(7, 3, 16)
    c_images, _, _ = data.training_batch(7, 4, 16)
    assert np.array_equal(a_images, b_images) and a_samples == b_samples and a_captions == b_captions
    assert not np.array_equal(a_images, c_images)
    assert a_images.shape == (16, data.IMAGE_SIZE, data.IMAGE_SIZE, 3) and a_images.dtype == np.uint8


def test_training_never_draws_a_held_out_triple_and_backgrounds_differ():
    for step in range(20):
        _, samples, _ = data.training_batch(0, step, 64)
        for s in samples:
            assert (s.shape, s.colour, s.background) not in data.HELD_OUT
            assert s.colour != s.background


def test_captions_include_dropout_and_state_only_true_attributes():
    captions = [c for step in range(10) for c in data.training_batch(1, step, 64)[2]]
    assert "" in captions
    _, samples, texts = data.training_batch(1, 0, 64)
    for sample, text in zip(samples, texts, strict=True):
        assert data.parse_caption(text).matches(sample)


@pytest.mark.parametrize("template", list(data.CAPTION_TEMPLATES))
def test_parse_caption_inverts_caption(template):
    sample = data.Sample("triangle", "orange", "white", 16, 16, 8)
    assert data.parse_caption(data.caption(sample, template)) == data.spec_of(sample, template)


def test_render_paints_shape_colour_inside_and_background_on_the_border():
    sample = data.Sample("square", "blue", "yellow", 16, 16, 8)
    image = data.render(sample)
    assert tuple(image[16, 16]) == data.PALETTE["blue"]
    assert tuple(image[0, 0]) == data.PALETTE["yellow"]


def test_held_out_captions_are_full_and_never_trained():
    captions = data.held_out_captions()
    assert len(captions) == len(data.HELD_OUT) > 0
    for text, spec in captions:
        assert data.parse_caption(text) == spec
        assert (spec.shape, spec.colour, spec.background) in data.HELD_OUT
