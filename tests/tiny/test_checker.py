import numpy as np
import pytest
import torch

from nag_guidance.tiny import data
from nag_guidance.tiny.checker import check


@pytest.fixture(scope="module")
def ground_truth():
    rng = np.random.default_rng(42)
    samples = [data.random_sample(rng, data.ALL_TRIPLES) for _ in range(400)]
    return samples, data.render_batch(samples)


def test_reads_ground_truth_images(ground_truth):
    samples, images = ground_truth
    result = check(images)
    assert np.mean(np.array(result.shape_names()) == np.array([s.shape for s in samples])) >= 0.99
    assert np.mean(np.array(result.colour_names()) == np.array([s.colour for s in samples])) >= 0.99
    assert np.mean(np.array(result.background_names()) == np.array([s.background for s in samples])) >= 0.99
    assert result.clean.mean() >= 0.99 and result.on_palette.mean() >= 0.99


def test_matches_treats_open_attributes_as_right(ground_truth):
    samples, images = ground_truth
    result = check(images[:20])
    right = result.matches([data.Spec(shape=s.shape) for s in samples[:20]])
    assert right["colour"].all() and right["background"].all() and right["shape"].mean() >= 0.95
    wrong = result.matches([data.Spec(colour=s.background) for s in samples[:20]])
    assert not wrong["colour"].any()


def test_blurred_images_are_not_clean_but_still_read(ground_truth):
    samples, images = ground_truth
    pixels = torch.from_numpy(images[:100]).permute(0, 3, 1, 2).float()
    blurred = torch.nn.functional.avg_pool2d(pixels, 5, stride=1, padding=2, count_include_pad=False)
    result = check(blurred.permute(0, 2, 3, 1).round().to(torch.uint8).numpy())
    assert result.clean.mean() < 0.2
    assert np.mean(np.array(result.colour_names()) == np.array([s.colour for s in samples[:100]])) >= 0.9


def test_off_palette_colour_is_flagged():
    image = data.render(data.Sample("circle", "red", "white", 16, 16, 9))
    image[data.shape_mask("circle", 16, 16, 9)] = (128, 128, 128)  # grey: ≥ 90 from every palette entry
    result = check(image[None])
    assert not result.on_palette[0] and not result.clean[0] and result.colour_distance[0] > 40
    assert result.shape_names() == ["circle"]


def test_empty_image_has_no_shape():
    image = np.full((1, 32, 32, 3), data.PALETTE["green"], dtype=np.uint8)
    result = check(image)
    assert result.shape_names() == [None] and result.confidence[0] == 0 and not result.clean[0]
    assert result.background_names() == ["green"]


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        check(np.zeros((2, 32, 32, 3), dtype=np.float32))
