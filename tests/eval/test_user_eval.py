"""`nag eval --model --clip-model`: user models scored by local CLIP weights; never a download."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from nag_guidance.eval.clip import ClipScorer, ClipUnavailable
from nag_guidance.eval.user import read_pairs, run
from nag_guidance.testing.image import clip_tokenizer, make_sd


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_sd().save_pretrained(root / "sd")
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(tokenizer.get_vocab()), max_position_embeddings=77, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size=32, crop_size=32), tokenizer=tokenizer).save_pretrained(
        root / "clip"
    )
    return root


def test_user_model_is_scored_per_method(local_models, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a red car\tdog\n")
    summary = run(str(local_models / "sd"), local_models / "clip", pairs, tmp_path / "out", seeds=2, steps=2,
                  height=16, width=16)  # fmt: skip
    assert set(summary) == {"stock", "cfg", "nag"}
    for values in summary.values():
        assert values["samples"] == 2 and values["clip_prompt"] >= 0 and values["clip_negative"] >= 0
    assert json.loads((tmp_path / "out" / "user-results.json").read_text()) == summary
    # another run into the same folder summarises only its own records
    pairs.write_text("a blue car\tcat\n")
    again = run(str(local_models / "sd"), local_models / "clip", pairs, tmp_path / "out", seeds=2, steps=2,
                height=16, width=16)  # fmt: skip
    assert all(values["samples"] == 2 for values in again.values())


def test_clip_must_be_local(tmp_path):
    with pytest.raises(ClipUnavailable, match="not a local CLIP checkpoint"):
        ClipScorer(tmp_path / "openai/clip-vit-base-patch32")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ClipUnavailable, match="could not load CLIP"):
        ClipScorer(tmp_path / "broken")


def test_pairs_file_format(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("a prompt without a tab\n")
    with pytest.raises(ValueError, match="prompt<TAB>negative"):
        read_pairs(bad)
    good = tmp_path / "good.txt"
    good.write_text("# comment\na circle\tred\n")
    assert read_pairs(good) == [("a circle", "red")]


def test_pairs_file_with_a_byte_order_mark(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes("\ufeff# pairs: prompt<TAB>negative\na circle\tred\n".encode())
    assert read_pairs(pairs) == [("a circle", "red")]  # the comment stays a comment
