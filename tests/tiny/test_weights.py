import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from nag_guidance.tiny import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    WeightsError,
    load_feature_net,
    load_pipeline,
    verify_weights,
    weights_path,
)
from nag_guidance.tiny.evaluate import generate
from nag_guidance.tiny.features import extract_features, frechet_distance
from nag_guidance.tiny.loading import PIPELINE_DIR, TEACHER_DIR, write_manifest


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def test_shipped_weights_verify_and_are_small():
    verify_weights()
    total = sum(p.stat().st_size for p in weights_path().rglob("*") if p.is_file())
    assert total <= 20 * 2**20


def test_stock_pipeline_loads_the_checkpoint_with_cross_attention_modules():
    pipe = StableDiffusionPipeline.from_pretrained(
        weights_path() / PIPELINE_DIR, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    cross = [m for name, m in pipe.unet.named_modules() if name.endswith("attn2")]
    assert cross and all(isinstance(m, Attention) and m.is_cross_attention for m in cross)
    image = pipe(
        "a red circle",
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=DEFAULT_GUIDANCE,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_teacher_unet_loads_and_matches_the_student_architecture(pipe):
    teacher = UNet2DConditionModel.from_pretrained(weights_path() / TEACHER_DIR)
    assert teacher.config.block_out_channels == pipe.unet.config.block_out_channels
    assert any(not torch.equal(a, b) for a, b in zip(teacher.parameters(), pipe.unet.parameters(), strict=True))


@pytest.mark.parametrize("steps", [1, 4])
def test_generation_is_deterministic_per_seed(pipe, steps):
    prompts, seeds = ["a blue square on a white background", "a triangle"], [3, 4]
    first = generate(pipe, prompts, seeds, steps)
    again = generate(pipe, prompts, seeds, steps)
    other = generate(pipe, prompts, [5, 6], steps)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_damaged_file_raises_an_error_naming_it(tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(weights_path(), copy)
    target = copy / PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors") as info:
        load_pipeline(path=copy)
    assert "damaged" in str(info.value) and "unet" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_missing_file_raises_an_error_naming_it(tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(weights_path(), copy)
    (copy / TEACHER_DIR / "config.json").unlink()
    with pytest.raises(WeightsError, match="missing") as info:
        verify_weights(copy)
    assert "teacher_unet" in str(info.value)


def test_feature_distance_tells_a_narrower_distribution_apart():
    from nag_guidance.tiny import data

    net = load_feature_net()
    rng = np.random.default_rng(0)
    real_a = data.render_batch([data.random_sample(rng, data.ALL_TRIPLES) for _ in range(200)])
    real_b = data.render_batch([data.random_sample(rng, data.ALL_TRIPLES) for _ in range(200)])
    circles = data.render_batch([data.sample_for_spec(rng, data.Spec(shape="circle")) for _ in range(200)])
    a, b, c = (extract_features(net, x) for x in (real_a, real_b, circles))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, c) > 3 * frechet_distance(a, b)


def test_teacher_pipeline_and_unknown_unet_name():
    teacher = load_pipeline(unet="teacher", verify=False)
    assert teacher.unet.config.block_out_channels == load_pipeline(verify=False).unet.config.block_out_channels
    with pytest.raises(ValueError, match="unet='bogus'"):
        load_pipeline(unet="bogus")


def test_feature_net_reads_ground_truth_attributes():
    from nag_guidance.tiny import data
    from nag_guidance.tiny.features import HEADS, to_input

    rng = np.random.default_rng(1)
    samples = [data.random_sample(rng, data.ALL_TRIPLES) for _ in range(200)]
    with torch.no_grad():
        outputs = load_feature_net()(to_input(data.render_batch(samples)))
    for head, names in zip(HEADS, (data.SHAPES, data.COLOURS, data.COLOURS), strict=True):
        truth = np.array([names.index(getattr(s, head)) for s in samples])
        assert (outputs[head].argmax(1).numpy() == truth).mean() >= 0.99


def test_nag_apply_gives_the_embedded_model_its_own_preset(tmp_path):
    import nag_guidance as nag

    pipe = nag.apply(load_pipeline())
    pipe("a circle", nag_negative_prompt="red", num_inference_steps=1, guidance_scale=0, output_type="latent")
    assert pipe.nag_report.config == nag.get_preset("tiny").config
    # the same architecture from another folder is any SD model: the SD 1.5 row
    shutil.copytree(weights_path(), tmp_path / "copy")
    other = nag.apply(load_pipeline(path=tmp_path / "copy"))
    other("a circle", nag_negative_prompt="red", num_inference_steps=1, guidance_scale=0, output_type="latent")
    assert other.nag_report.config == nag.get_preset("sd15").config
    flux = nag.apply(load_pipeline(model="tiny-flux"))
    assert nag.defaults(flux) == nag.get_preset("tiny-flux").config


HASH = "0" * 64
BAD_MANIFESTS = [
    pytest.param("[]", "expected an object", id="a list"),
    pytest.param("null", "expected an object", id="null"),
    pytest.param('{"sha256": []}', "expected an object", id="sha256 a list"),
    pytest.param('{"sha256": "abc"}', "expected an object", id="sha256 a string"),
    pytest.param('{"files": {}}', "expected an object", id="no sha256"),
    pytest.param('{"sha256": {"a.bin": ["' + HASH + '"]}}', "not 64 hex digits", id="a hash that is a list"),
    pytest.param('{"sha256": {"a.bin": 5}}', "not 64 hex digits", id="a hash that is a number"),
    pytest.param('{"sha256": {"a.bin": "abc"}}', "not 64 hex digits", id="a short hash"),
    pytest.param('{"sha256": {"../a.bin": "' + HASH + '"}}', "not a file inside", id="outside the folder"),
    pytest.param('{"sha256": {"/etc/hostname": "' + HASH + '"}}', "not a file inside", id="an absolute path"),
    pytest.param('{"sha256": {}}', "is not in", id="an empty manifest"),
    pytest.param("[" * 100_000, "is damaged", id="deep nesting"),
]


@pytest.fixture
def small_set(tmp_path):
    """A weights set of two files and their manifest."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"weights")
    (tmp_path / "sub" / "config.json").write_text("{}")
    write_manifest(tmp_path)
    verify_weights(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("manifest", "message"), BAD_MANIFESTS)
def test_a_manifest_of_the_wrong_shape_is_a_clear_weights_error(small_set, manifest, message):
    (small_set / "manifest.json").write_text(manifest)
    with pytest.raises(WeightsError, match=message):
        verify_weights(small_set)


def test_a_file_the_manifest_does_not_cover_is_refused(small_set):
    (small_set / "sub" / "extra.safetensors").write_bytes(b"not checked by anything")
    with pytest.raises(WeightsError, match="extra.safetensors is not in"):
        verify_weights(small_set)
