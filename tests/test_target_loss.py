"""benchmarks/target_loss.py: it finds each region's first text token, and its image-blind reference is the
training targets' first-token rates, so that a model that reads a finding scores below it and one that
memorised the training scans above it on held-out scans."""
from __future__ import annotations

import math

from benchmark_scripts import load_benchmark

target_loss = load_benchmark("target_loss")


def _scan(tokens, nll):
    return {"case_id": "x", "tokens": tokens, "nll": nll,
            "decisions": target_loss.decision_positions(tokens, ["heart", "lung"])}


TOKENS_NORMAL = ["The region 1 is", " heart", ":", " Heart", " size", " is", " normal", ".",
                 "The region 2 is", " lung", ":", " Both", " lungs", " are", " clear", ".", "</s>"]
TOKENS_FINDING = ["The region 1 is", " heart", ":", " The", " heart", " is", " enlarged", ".",
                  "The region 2 is", " lung", ":", " Both", " lungs", " are", " clear", ".", "</s>"]


def test_decision_positions_are_the_first_text_token_of_each_region():
    assert target_loss.decision_positions(TOKENS_NORMAL, ["heart", "lung"]) == [(3, "heart"), (11, "lung")]
    # an area name inside a region's text is not a header
    tokens = ["The region 1 is", " heart", ":", " The", " heart", ":", " x", "The region 2 is", " lung", ":", " y"]
    assert target_loss.decision_positions(tokens, ["heart", "lung"]) == [(3, "heart"), (10, "lung")]


def test_image_blind_reference_and_ratio():
    train = [_scan(TOKENS_NORMAL, [0.0] * 17)] * 3 + [_scan(TOKENS_FINDING, [0.0] * 17)]
    prior = target_loss.image_blind(train)
    assert prior["heart"] == {" Heart": 3, " The": 1} and prior["lung"] == {" Both": 4}
    # held out: a model that puts 0.9 on the right start at every decision reads the image; the rates do not
    reads = [_scan(TOKENS_FINDING, [0.0] * 3 + [-math.log(0.9)] + [0.0] * 7 + [-math.log(0.9)] + [0.0] * 5)]
    s = target_loss.summarise(reads, prior)
    blind_heart = -math.log((1 + 0.5) / (4 + 0.5 * 3))
    assert abs(s["areas"][0]["image_blind_nll"] - round(blind_heart, 3)) < 1e-9 and s["areas"][0]["area"] == "heart"
    assert s["ratio_model_vs_image_blind"] < 1 and s["decision_share_of_nll"] == 1.0
    wrong = [_scan(TOKENS_FINDING, [0.0] * 3 + [5.0] + [0.0] * 13)]
    assert target_loss.summarise(wrong, prior)["ratio_model_vs_image_blind"] > 1
