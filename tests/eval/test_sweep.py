"""The preset sweep's rule (``nag_guidance.eval.sweep``) on made-up records: margins, the adherence band, the pick."""

from nag_guidance.eval import sweep
from nag_guidance.eval.suite import KINDS


def _records(label: str, negative: float, adherence: float, clean: float) -> list[dict]:
    return [
        {"label": label, "kind": kind, "negative_rate": negative, "adherence": adherence, "clean": clean}
        for kind in KINDS
    ]


def test_the_pick_keeps_the_subject_before_it_maximises_the_worst_kind():
    records = _records("none", 0.40, 0.90, 0.50)
    records += _records("nag strong", 0.00, 0.80, 0.45)  # suppresses everything, loses 10 points of adherence
    records += _records("nag mild", 0.12, 0.89, 0.48)  # 70 % suppression, keeps the subject
    records += _records("nag milder", 0.20, 0.90, 0.50)  # 50 %
    table = sweep.changes(records)
    assert abs(table["nag mild"]["colour"]["suppression"] - 0.7) < 1e-9
    assert abs(sweep.worst_margin(table["nag strong"]) - (-0.07)) < 1e-9  # adherence −10 against the −3 band
    assert abs(sweep.worst_margin(table["nag mild"]) - (-0.1)) < 1e-9  # suppression 70 % against 80 %
    assert not sweep.keeps_the_subject(table["nag strong"]) and sweep.keeps_the_subject(table["nag mild"])
    assert sweep.pick(table, "nag") == "nag mild"  # "strong" has the better worst margin, but loses the subject
    assert sweep.pick(table, "vsf") is None
    del table["nag mild"], table["nag milder"]
    assert sweep.pick(table, "nag") == "nag strong"  # nothing keeps the subject: the best worst margin
    page = sweep.page(records, records, "python -m nag_guidance.eval.sweep")
    assert "**Chosen NAG: nag mild.** Target met on every core kind: no." in page


def test_stage_one_covers_the_grid_the_ends_and_vsf():
    labels = [c.label for c in sweep.stage_one()]
    assert labels[0] == "none" and len(labels) == len(set(labels))
    assert sum(label.startswith("vsf") for label in labels) == len(sweep.VSF_SCALES)
    assert sum("end=" in label for label in labels) == len(sweep.ENDS)
