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


def test_kinds_whose_pairs_differ_get_a_row_per_pair_and_intervals_stay_inside_0_100():
    from nag_guidance.eval.suite import pairs

    suite, seeds = pairs(("luminance",)), 2
    n = len(suite) * seeds
    records = []
    for condition, first_pair_hits in (
        (Condition("none", 4), "11"),
        (Condition("nag", 4, scale=5, tau=1, alpha=1), "01"),
    ):
        negative = first_pair_hits + "0" * (n - 2)  # only the first pair ever shows its negative
        record = _record(condition, "luminance")
        record["result"].update(seeds=[1000, seeds], rows=n, adherence_low=-0.2, adherence_high=1.3,
                                cells={"negative": negative, "adherent": "1" * n, "clean": "1" * n})  # fmt: skip
        records.append(record)
    page = report.markdown(records, "nag eval", {})
    assert "### luminance, pair by pair" in page
    first = suite[0]
    assert f"| `{first.prompt}` | `{first.negative}` | 100 (100) / 100 | 50 (50) / 100 |" in page
    assert f"| `{suite[1].prompt}` | `{suite[1].negative}` | 0 (0) / 100 | 0 (0) / 100 |" in page
    assert "90.0 [0.0, 100.0]" in page  # a share's interval is cut at 0 and 100
    assert "Seeds: 1000–1001 (reporting range)" in page
