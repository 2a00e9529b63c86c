"""Region recognition from RRA prefixes, against mask areas or reference prefixes, counted by hand."""
import pytest

from reg2rg.constants import REGIONS
from reg2rg.evaluate.recognition import MISSING, recognition_metrics, region_pairs, true_areas
from reg2rg.rra import build_rra_target


def _rra(*items):
    return build_rra_target([(i, a, f"text of {a}.") for i, a in items])


@pytest.fixture
def pairs():
    # scan a: masks say 1 lung, 2 heart, 3 pleura, 4 trachea and bronchie
    #         prediction names 1 lung (ok), 2 mediastinum (wrong), 3 pleura (ok), 4 trachea and bronchie (ok)
    # scan b: no mask areas: reference prefixes say 1 heart, 2 lung, 3 bone
    #         prediction names 1 heart (ok), 2 lung (ok), 3 "kidney" (unknown word); region 4 not in reference
    # scan c: masks say 1 heart, 2 (no region), 3 thyroid; prediction has no prefix for 3
    a = ("a", _rra((1, "lung"), (2, "heart"), (3, "pleura"), (4, "trachea and bronchie")),
         _rra((1, "lung"), (2, "mediastinum"), (3, "pleura"), (4, "trachea and bronchie")),
         ["lung", "heart", "pleura", "trachea and bronchie"])
    b = ("b", _rra((1, "heart"), (2, "lung"), (3, "bone")),
         _rra((1, "heart"), (2, "lung"), (3, "kidney"), (4, "abdomen")), None)
    c = ("c", "plain reference", _rra((1, "heart")), ["heart", None, "thyroid"])
    ids, refs, preds, areas = zip(a, b, c)
    return region_pairs(ids, refs, preds, areas)


def test_true_areas_prefer_masks_and_skip_absent_regions():
    assert true_areas("The region 1 is heart: x", ["lung", None, "bone"]) == {1: "lung", 3: "bone"}
    assert true_areas("The region 2 is trachea and bronchie: x The region 5 is lung: y", None) == {
        2: "trachea and bronchie", 5: "lung"}


def test_pairs(pairs):
    got = [(p.case_id, p.index, p.true_area, p.named_area) for p in pairs]
    assert got == [
        ("a", 1, "lung", "lung"), ("a", 2, "heart", "mediastinum"), ("a", 3, "pleura", "pleura"),
        ("a", 4, "trachea and bronchie", "trachea and bronchie"),
        ("b", 1, "heart", "heart"), ("b", 2, "lung", "lung"), ("b", 3, "bone", "kidney"),
        ("c", 1, "heart", "heart"), ("c", 3, "thyroid", MISSING),
    ]


def test_metrics_by_hand(pairs):
    m = recognition_metrics(pairs, source="mixed")
    rows = {r["area"]: r for r in m["per_region"]}
    assert [r["area"] for r in m["per_region"]] == list(REGIONS)
    # heart: true 3 times (a2 wrong, b1 ok, c1 ok) -> tp 2, fn 1; never named wrongly -> fp 0
    assert (rows["heart"]["tp"], rows["heart"]["fp"], rows["heart"]["fn"]) == (2, 0, 1)
    assert rows["heart"]["precision"] == 1.0 and rows["heart"]["recall"] == pytest.approx(2 / 3)
    assert rows["heart"]["f1"] == pytest.approx(0.8)
    # mediastinum: never true, named once wrongly -> fp 1, precision 0
    assert (rows["mediastinum"]["tp"], rows["mediastinum"]["fp"], rows["mediastinum"]["fn"]) == (0, 1, 0)
    # bone named "kidney" (unknown) and thyroid missing: false negatives only
    assert (rows["bone"]["tp"], rows["bone"]["fn"], rows["thyroid"]["fn"]) == (0, 1, 1)
    assert rows["trachea and bronchie"]["f1"] == 1.0  # the full name, not its first word
    assert m["n_regions"] == 9 and m["n_scans"] == 3
    assert m["accuracy"] == pytest.approx(6 / 9)
    # per scan: a 3/4, b 2/3, c 1/2
    assert m["accuracy_per_scan"]["mean"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)
    # means over areas that occur: all = heart .8, lung 1, pleura 1, trachea 1, bone 0, thyroid 0;
    # without lung and pleura: heart .8, trachea 1, bone 0, thyroid 0
    assert m["mean"]["all_regions"]["f1"] == pytest.approx((0.8 + 1 + 1 + 1 + 0 + 0) / 6)
    assert m["mean"]["without_lung_pleura"]["f1"] == pytest.approx((0.8 + 1 + 0 + 0) / 4)
    assert m["source"] == "mixed"


def test_confusion_matrix(pairs):
    conf = recognition_metrics(pairs)["confusion"]
    assert conf["named"][-2:] == ["other", "missing"]
    counts = {(t, n): c for t, row in zip(conf["true"], conf["counts"]) for n, c in zip(conf["named"], row) if c}
    assert counts == {("heart", "mediastinum"): 1, ("heart", "heart"): 2, ("lung", "lung"): 2,
                      ("pleura", "pleura"): 1, ("trachea and bronchie", "trachea and bronchie"): 1,
                      ("bone", "other"): 1, ("thyroid", "missing"): 1}
    assert sum(map(sum, conf["counts"])) == 9


def test_no_regions():
    m = recognition_metrics(region_pairs(["x"], ["plain"], ["plain"], None))
    assert m["n_regions"] == 0 and m["accuracy"] is None and m["mean"]["all_regions"]["f1"] is None
