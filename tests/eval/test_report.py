"""The results page: every kind of the suite gets its table, and the headline shows each model's own preset."""

from nag_guidance.config import get_preset
from nag_guidance.eval import report
from nag_guidance.eval.suite import ALL_KINDS, Condition


def _record(condition: Condition, kind: str) -> dict:
    result = {"kind": kind, "samples": 8, "negative_rate": 0.25, "negative_rate_se": 0.1, "suppression": 0.5,
              "adherence": 0.9, "adherence_se": 0.05, "on_palette": 1.0, "entropy_bits": 1.0, "clean": 0.5,
              "frechet": 100.0}  # fmt: skip
    return {"condition": condition.as_dict(), "result": result, "pair": {"prompt": "a circle", "negative": "red"}}


def _records(model: str) -> list[dict]:
    preset = get_preset(model).config
    nag = Condition("nag", 4, scale=preset.scale, tau=preset.tau, alpha=preset.alpha, model=model)
    other = Condition("nag", 4, scale=preset.scale + 1, tau=preset.tau, alpha=preset.alpha, model=model)
    vsf = Condition("vsf", 4, scale=0.5, model=model)
    return [_record(c, kind) for c in (Condition("none", 4, model=model), nag, other, vsf) for kind in ALL_KINDS]


def test_every_kind_has_a_table_and_a_headline_row():
    page = report.markdown(_records("tiny"), "nag eval", {})
    for kind in ALL_KINDS:
        assert f"## {kind}: student, 4 steps" in page
        assert f"| {kind} | vsf s=0.5 |" in page
    assert page.startswith("# Results: NAG vs CFG vs VSF vs nothing on the embedded model")


def test_the_headline_shows_the_model_s_own_preset():
    for model in ("tiny", "tiny-flux"):
        preset = get_preset(model).config
        headline = "\n".join(report.headline(_records(model)))
        assert f"NAG at the `{model}` preset (s={preset.scale:g}, τ={preset.tau:g}, α={preset.alpha:g})" in headline
        shown = Condition("nag", 4, scale=preset.scale, tau=preset.tau, alpha=preset.alpha, model=model).label
        hidden = Condition("nag", 4, scale=preset.scale + 1, tau=preset.tau, alpha=preset.alpha, model=model).label
        assert f"| colour | {shown} |" in headline and f"| {hidden} |" not in headline
