"""Text metrics: the reg2rg protocol rebuilt on sacrebleu / rouge_score / nltk, checked on hand-computed
cases, and the coco protocol through pycocoevalcap (Java; one shared run per module)."""
import math

import numpy as np
import pytest

from reg2rg.evaluate import text_metrics as tm

WORDNET_OK = tm.load_wordnet().reader is not None
needs_wordnet = pytest.mark.skipif(not WORDNET_OK, reason="WordNet 3.0 not installed (Debian wordnet-base)")
needs_java = pytest.mark.skipif(tm.java_available() is not None, reason="no Java runtime")


# ----------------------------------------------------------------------------------------------- BLEU
def test_tokenize_13a_keeps_case_and_splits_punctuation():
    assert tm.tokenize_13a("The heart is enlarged. No effusion, 3.5 cm.") == [
        "The", "heart", "is", "enlarged", ".", "No", "effusion", ",", "3.5", "cm", "."]


def test_bleu_smoothed_with_brevity_penalty_by_hand():
    # reference (13a): The heart is normal in size .  -> 7 tokens
    # candidate (13a): The heart is normal .          -> 5 tokens
    # 1-grams: 5 of 5 match                 -> p1 = (5 + 1) / (5 + 1) = 1
    # 2-grams: The heart, heart is, is normal match; "normal ." does not -> p2 = (3 + 1) / (4 + 1) = 0.8
    # 3-grams: The heart is, heart is normal match; "is normal ." not   -> p3 = (2 + 1) / (3 + 1) = 0.75
    # 4-grams: The heart is normal matches; "heart is normal ." not     -> p4 = (1 + 1) / (2 + 1) = 2/3
    # brevity penalty: c = 5 < r = 7 -> exp(1 - 7/5) = exp(-0.4) = 0.670320
    # BLEU-2 = exp((ln 1 + ln 0.8) / 2) * 0.670320 = 0.894427 * 0.670320 = 0.599552
    # BLEU-4 = (1 * 0.8 * 0.75 * 2/3) ** (1/4) * 0.670320 = 0.4 ** 0.25 * 0.670320 = 0.795271 * 0.670320 = 0.533086
    ref, cand = "The heart is normal in size.", "The heart is normal."
    b2 = tm.bleu_13a([cand], [ref], max_order=2, smooth=True)
    assert b2.precisions == pytest.approx((1.0, 0.8))
    assert b2.brevity_penalty == pytest.approx(math.exp(-0.4))
    assert b2.bleu == pytest.approx(math.sqrt(0.8) * math.exp(-0.4))
    assert b2.bleu == pytest.approx(0.599552, abs=1e-6)
    b4 = tm.bleu_13a([cand], [ref], max_order=4, smooth=True)
    assert b4.precisions == pytest.approx((1.0, 0.8, 0.75, 2 / 3))
    assert b4.bleu == pytest.approx(0.4 ** 0.25 * math.exp(-0.4))
    assert b4.bleu == pytest.approx(0.533086, abs=1e-6)


def test_bleu_is_case_sensitive_and_unsmoothed_zero():
    # "the" != "The" (evaluate's bleu does not lower-case); without smoothing a missing 4-gram gives 0.
    b = tm.bleu_13a(["the heart is normal in size."], ["The heart is normal in size."], max_order=1, smooth=False)
    assert b.precisions == pytest.approx((6 / 7,))
    assert tm.bleu_13a(["a b c"], ["a b d"], max_order=4, smooth=False).bleu == 0.0


def test_bleu_corpus_pools_counts_and_handles_empty_candidate():
    # corpus BLEU sums matches and lengths over segments, it is not the mean of segment scores
    preds, refs = ["The heart is normal.", "No effusion."], ["The heart is normal in size.", "No pleural effusion."]
    corpus = tm.bleu_13a(preds, refs, max_order=2, smooth=True)
    assert corpus.translation_length == 5 + 3 and corpus.reference_length == 7 + 4
    # 1-grams: 5 + 3 of 8; 2-grams: 3 of 4 and 1 ("No effusion" no, "effusion ." yes) of 2
    assert corpus.precisions == pytest.approx(((8 + 1) / (8 + 1), (4 + 1) / (6 + 1)))
    empty = tm.bleu_13a([""], ["The heart is normal."], max_order=4, smooth=True)
    assert empty.bleu == 0.0 and empty.brevity_penalty == 0.0


# ----------------------------------------------------------------------------------------------- ROUGE
def test_rouge_l_by_hand():
    # reference: the cat was under the bed (6 tokens); candidate: the cat was found under the bed (7)
    # LCS = the cat was under the bed = 6 -> P = 6/7, R = 6/6, F = 2PR / (P + R) = 12/13 = 0.923077
    s = tm.rouge_scores("the cat was found under the bed", "the cat was under the bed")
    assert s["rouge_l"] == pytest.approx(12 / 13)
    # rouge_score's tokenizer lower-cases and drops punctuation
    assert tm.rouge_l("The CAT, was under the bed.", "the cat was under the bed") == pytest.approx(1.0)
    # LCS of a b c d / a c e d f is a c d = 3: P = 3/4, R = 3/5, F = 2 * 0.75 * 0.6 / 1.35 = 0.666667
    assert tm.rouge_l("a b c d", "a c e d f") == pytest.approx(2 * 0.75 * 0.6 / 1.35)


# ----------------------------------------------------------------------------------------------- METEOR
def test_sentence_split_and_word_tokens_follow_punkt_rules():
    text = "The heart is normal. No effusion measuring 3.5 cm. See e.g. the lung. Nodule 3. the end"
    assert tm.sentence_split(text) == ["The heart is normal.", "No effusion measuring 3.5 cm.",
                                       "See e.g. the lung.", "Nodule 3. the end"]
    toks = tm.meteor_tokenize(text)
    assert toks[:5] == ["The", "heart", "is", "normal", "."]
    assert "3.5" in toks and "e.g." in toks and toks[-3:] == ["3.", "the", "end"]


@needs_wordnet
def test_meteor_by_hand_exact_and_wordnet_synonym():
    wn = tm.load_wordnet().reader
    # identical, 6 unigrams in one chunk: P = R = 1, Fmean = 1, penalty = 0.5 * (1/6) ** 3
    assert tm.meteor_nltk("the cat sat on the mat", "the cat sat on the mat", wn) == pytest.approx(
        1 - 0.5 * (1 / 6) ** 3)
    # "sick" and "ill" share a WordNet synset: 2 matches in 1 chunk -> 1 - 0.5 * (1/2) ** 3 = 0.9375.
    # Exact matching alone would give 1 match: P = R = Fmean = 0.5, 1 chunk / 1 match -> penalty 0.5 -> 0.25.
    assert tm.meteor_nltk("sick heart", "ill heart", wn) == pytest.approx(0.9375)
    # nltk's quirk, kept: its stem stage replaces unmatched reference words by their stems before the
    # WordNet stage, so "large" (stem "larg") no longer matches "big".
    assert tm.meteor_nltk("big heart", "large heart", wn) == pytest.approx(0.25)


def test_wordnet_missing_gives_reason_not_number(tmp_path, monkeypatch):
    st = tm.load_wordnet(tmp_path)
    assert st.reader is None and tm.WORDNET_ENV in st.reason and "wordnet-base" in st.reason
    monkeypatch.setenv(tm.WORDNET_ENV, str(tmp_path))
    assert tm.wordnet_dir() == tmp_path
    res = tm.reg2rg_protocol(["The heart is normal."], ["The heart is normal in size."])
    assert res["mean"]["meteor"] is None and res["overall"]["meteor"] is None
    assert "WordNet" in res["unavailable"]["meteor"]
    assert res["mean"]["bleu_1"] is not None


def test_wordnet_default_is_debian_location(monkeypatch):
    monkeypatch.delenv(tm.WORDNET_ENV, raising=False)
    assert str(tm.wordnet_dir()) == "/usr/share/wordnet"


# ----------------------------------------------------------------------------------------------- CIDEr, protocol
def test_cider_identical_pairs_score_ten():
    corpus, per = tm.cider_scores(["a b c d", "e f g h"], ["a b c d", "e f g h"])
    assert corpus == pytest.approx(10.0) and per == pytest.approx([10.0, 10.0])


def test_reg2rg_protocol_means_per_scan_and_corpus_overall():
    preds = ["The heart is normal.", "No effusion.", "Bilateral pleural effusion is seen."]
    refs = ["The heart is normal in size.", "No pleural effusion.", "There is bilateral pleural effusion."]
    res = tm.reg2rg_protocol(preds, refs)
    per = [tm.bleu_13a([p], [r], max_order=4, smooth=True).bleu for p, r in zip(preds, refs)]
    assert res["n"] == 3
    assert res["mean"]["bleu_4"] == pytest.approx(np.mean(per))
    assert res["std"]["bleu_4"] == pytest.approx(np.std(per))  # numpy's std, ddof 0, as the authors
    assert res["overall"]["bleu_4"] == pytest.approx(tm.bleu_13a(preds, refs, max_order=4, smooth=True).bleu)
    assert res["overall"]["bleu_4"] != pytest.approx(res["mean"]["bleu_4"])
    rl = [tm.rouge_l(p, r) for p, r in zip(preds, refs)]
    assert res["mean"]["rouge_l"] == pytest.approx(np.mean(rl))
    assert res["mean"]["cider"] == pytest.approx(res["overall"]["cider"])
    if WORDNET_OK:
        assert 0 < res["mean"]["meteor"] <= 1 and res["unavailable"] == {}


# ----------------------------------------------------------------------------------------------- coco
@pytest.fixture(scope="module")
def coco_run():
    if tm.java_available() is not None:
        pytest.skip("no Java runtime")
    groups = {
        "same": (["The heart is normal in size. No pleural effusion."] * 2,
                 ["The heart is normal in size. No pleural effusion."] * 2),
        "mixed": (["Heart normal.", "", "Emphysema in both lungs."],
                  ["The heart is normal.", "No nodule.", "There is emphysema in both lungs."]),
        "none": ([], []),
    }
    with tm.CocoScorer() as scorer:
        tokens = scorer.tokenize({"a": "The Heart, is NORMAL.", "b": "", "c": "Lungs: clear (no nodule)."})
        scores = scorer.score(groups)
    return tokens, scores


def test_coco_ptb_tokenizer_lowercases_and_drops_punctuation(coco_run):
    tokens, _ = coco_run
    assert tokens["a"] == "the heart is normal"
    assert tokens["b"] == ""
    # pycocoevalcap's quirk, kept: -lowerCase turns -LRB-/-RRB- into -lrb-/-rrb-, which its punctuation
    # list (upper case) does not remove.
    assert tokens["c"] == "lungs clear -lrb- no nodule -rrb-"


def test_coco_identical_reports_score_one(coco_run):
    _, scores = coco_run
    same = scores["same"]
    assert same["n"] == 2
    for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l"):
        assert same[k] == pytest.approx(1.0, abs=1e-6)
    assert same["meteor"] > 0.9


def test_coco_partial_group_and_empty_group(coco_run):
    _, scores = coco_run
    mixed = scores["mixed"]
    assert mixed["n"] == 3
    assert 0 < mixed["bleu_1"] < 1 and 0 < mixed["rouge_l"] < 1 and 0 < mixed["meteor"] < 1
    assert mixed["cider"] >= 0
    assert scores["none"]["n"] == 0 and scores["none"]["bleu_4"] is None
