"""Natural-language metrics of generated reports, under two protocols.

``coco``: the MS-COCO caption protocol as pycocoevalcap runs it: Stanford PTBTokenizer (Java, lower-cased,
punctuation removed), then BLEU-1..4, METEOR 1.5 (Java jar), ROUGE-L and CIDEr-D at corpus level.

``reg2rg``: what the Reg2RG paper's table used. The authors scored one pair per scan with Hugging Face
evaluate 0.4.2 (bleu, meteor, rouge) and pycocoevalcap's Cider, one sample at a time, and reported the mean
and standard deviation (numpy's, ddof=0) over scans. The same computations are rebuilt here on the
libraries evaluate wraps, without the hub scripts:

- BLEU-n: sacrebleu's 13a tokenizer (case kept), then the tensorflow-nmt ``compute_bleu`` with
  ``max_order=n`` and ``smooth=True``: (matches + 1) / (possible + 1) on every order, brevity penalty
  exp(1 - r / c) when the candidate is shorter than the reference.
- ROUGE-L: rouge_score's F-measure, ``RougeScorer(["rougeL"], use_stemmer=False)``, its default tokenizer.
- METEOR: nltk's ``meteor_score`` (alpha 0.9, beta 3, gamma 0.5) on nltk word tokens, with WordNet 3.0
  read from local files (``REG2RG_WORDNET`` or Debian's ``/usr/share/wordnet``); where WordNet is missing
  the value is null with a reason. Sentence splitting before word tokenisation uses nltk's Punkt algorithm
  with a fixed parameter set instead of the downloadable English model (see :func:`sentence_split`).
- CIDEr: pycocoevalcap's CIDEr-D on the untokenised strings (it splits on white space), one reference per scan.
"""
from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

WORDNET_ENV = "REG2RG_WORDNET"
DEBIAN_WORDNET = "/usr/share/wordnet"

# Names of the metrics each protocol reports, in output order.
COCO_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
REG2RG_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_1", "rouge_2", "rouge_l", "cider")

# WordNet 3.0's lexicographer files (its `lexnames` file, documented in lexnames(5WN)): number, name and
# syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb). Debian's wordnet-base ships the database but
# not this small file, which nltk's reader opens first; it is the same for every WordNet 3.0 copy.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_CODE = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES_TEXT = "".join(f"{i:02d}\t{n}\t{_POS_CODE[n.split('.')[0]]}\n" for i, n in enumerate(_LEXNAMES))

# Abbreviations given to the Punkt sentence splitter (a period after them does not end a sentence).
PUNKT_ABBREVIATIONS = frozenset(
    "e.g i.e vs approx dr mr mrs ms prof fig no nos st jr sr inc co corp ltd u.s a.m p.m "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)


# ---------------------------------------------------------------------------------------------------------
# BLEU (sacrebleu 13a tokens + tensorflow-nmt compute_bleu)
# ---------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def tokenize_13a(text: str) -> list[str]:
    """sacrebleu's mteval-v13a tokenisation (case kept), as a token list."""
    return _tokenizer_13a()(text).split()


@dataclass(frozen=True)
class BleuResult:
    bleu: float
    precisions: tuple[float, ...]
    brevity_penalty: float
    ratio: float
    translation_length: int
    reference_length: int


def _ngrams(tokens: Sequence[str], max_order: int) -> Counter:
    counts: Counter = Counter()
    for order in range(1, max_order + 1):
        for i in range(len(tokens) - order + 1):
            counts[tuple(tokens[i:i + order])] += 1
    return counts


def compute_bleu(reference_corpus: Sequence[Sequence[Sequence[str]]], translation_corpus: Sequence[Sequence[str]],
                 max_order: int = 4, smooth: bool = False) -> BleuResult:
    """Corpus BLEU as tensorflow-nmt's ``compute_bleu`` (the one Hugging Face evaluate's ``bleu`` wraps).

    ``reference_corpus[i]`` is the list of tokenised references of segment i. Clipped n-gram matches and
    possible n-grams are summed over the corpus; with ``smooth`` every order's precision is
    (matches + 1) / (possible + 1); the geometric mean is 0 when any precision is 0; the brevity penalty is
    exp(1 - 1 / ratio) for ratio = candidate length / shortest-reference length <= 1, else 1.
    Where the original divides by zero (an empty candidate or reference corpus) this returns a BLEU of 0.0
    for an empty candidate and a brevity penalty of 1.0 for an empty reference.
    """
    matches = [0] * max_order
    possible = [0] * max_order
    reference_length = 0
    translation_length = 0
    for references, translation in zip(reference_corpus, translation_corpus, strict=True):
        reference_length += min(len(r) for r in references)
        translation_length += len(translation)
        merged: Counter = Counter()
        for reference in references:
            merged |= _ngrams(reference, max_order)
        overlap = _ngrams(translation, max_order) & merged
        for ngram, count in overlap.items():
            matches[len(ngram) - 1] += count
        for order in range(1, max_order + 1):
            n_possible = len(translation) - order + 1
            if n_possible > 0:
                possible[order - 1] += n_possible
    precisions = []
    for i in range(max_order):
        if smooth:
            precisions.append((matches[i] + 1.0) / (possible[i] + 1.0))
        else:
            precisions.append(matches[i] / possible[i] if possible[i] > 0 else 0.0)
    if min(precisions) > 0:
        geo_mean = math.exp(sum(math.log(p) / max_order for p in precisions))
    else:
        geo_mean = 0.0
    if reference_length == 0:
        ratio, bp = math.inf, 1.0
    elif translation_length == 0:
        ratio, bp = 0.0, 0.0
    else:
        ratio = translation_length / reference_length
        bp = 1.0 if ratio > 1.0 else math.exp(1.0 - 1.0 / ratio)
    return BleuResult(geo_mean * bp, tuple(precisions), bp, ratio, translation_length, reference_length)


def bleu_13a(predictions: Sequence[str], references: Sequence[str], max_order: int = 4,
             smooth: bool = True) -> BleuResult:
    """evaluate's ``bleu.compute(predictions, [[r] for r in references], max_order, smooth)``: corpus BLEU
    over the given pairs (one pair gives the per-scan score the authors averaged)."""
    return compute_bleu([[tokenize_13a(r)] for r in references], [tokenize_13a(p) for p in predictions],
                        max_order=max_order, smooth=smooth)


# ---------------------------------------------------------------------------------------------------------
# ROUGE (rouge_score)
# ---------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """rouge_score F-measures (rouge1, rouge2, rougeL) of one pair, default tokenizer, no stemming."""
    s = _rouge_scorer().score(reference, prediction)
    return {"rouge_1": s["rouge1"].fmeasure, "rouge_2": s["rouge2"].fmeasure, "rouge_l": s["rougeL"].fmeasure}


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of one pair (rouge_score, use_stemmer=False)."""
    return rouge_scores(prediction, reference)["rouge_l"]


# ---------------------------------------------------------------------------------------------------------
# METEOR (nltk, local WordNet 3.0)
# ---------------------------------------------------------------------------------------------------------
def wordnet_dir(path: str | os.PathLike | None = None) -> Path:
    """The WordNet folder to read: ``path``, else $REG2RG_WORDNET, else Debian's /usr/share/wordnet."""
    return Path(path or os.environ.get(WORDNET_ENV) or DEBIAN_WORDNET)


@dataclass(frozen=True)
class WordNetStatus:
    reader: object | None  # an nltk WordNetCorpusReader, or None
    path: str
    reason: str | None  # why the reader is None


@lru_cache(maxsize=4)
def _load_wordnet_cached(folder: str) -> WordNetStatus:
    root = Path(folder)
    needed = ["data.noun", "index.noun", "data.verb", "index.verb", "data.adj", "index.adj", "data.adv",
              "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc"]
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        return WordNetStatus(None, folder, f"WordNet 3.0 not found at {folder} (missing {', '.join(missing[:3])}"
                                           f"{'...' if len(missing) > 3 else ''}); install Debian's wordnet-base "
                                           f"or set {WORDNET_ENV} to a WordNet 3.0 dict folder")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    has_lexnames = (root / "lexnames").is_file()

    class _LocalWordNet(WordNetCorpusReader):
        """WordNet 3.0 from a plain dict folder: lexnames supplied when the folder lacks it, and no mapping
        to the nltk_data `wordnet` corpus (that map only serves the multilingual OMW data)."""

        def open(self, fileid):
            if fileid == "lexnames" and not has_lexnames:
                return io.StringIO(LEXNAMES_TEXT)
            return super().open(fileid)

        def map_wn(self, version="wordnet"):
            return None

    # nltk refuses to read outside its data path: authorise this one folder (nltk's documented way).
    resolved = str(root.resolve())
    if resolved not in [str(p) for p in nltk.data.path]:
        nltk.data.path.append(resolved)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
            reader = _LocalWordNet(resolved, None)
        version = reader.get_version()
    except Exception as err:  # noqa: BLE001 - any failure means "no METEOR", reported with its reason
        return WordNetStatus(None, folder, f"cannot read WordNet at {folder}: {type(err).__name__}: {err}")
    if version != "3.0":
        return WordNetStatus(None, folder, f"WordNet at {folder} is version {version}, METEOR needs 3.0")
    return WordNetStatus(reader, folder, None)


def load_wordnet(path: str | os.PathLike | None = None) -> WordNetStatus:
    """Open WordNet 3.0 from local files for nltk (no download). Returns the reader or the reason it is
    unavailable; the folder is ``path``, $REG2RG_WORDNET, or /usr/share/wordnet (Debian's wordnet-base)."""
    return _load_wordnet_cached(str(wordnet_dir(path)))


@lru_cache(maxsize=1)
def _punkt():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(PUNKT_ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


def sentence_split(text: str) -> list[str]:
    """Sentences as nltk's ``sent_tokenize`` finds them, without its downloadable English model.

    nltk's Punkt algorithm (PunktSentenceTokenizer) runs with a fixed parameter set: the abbreviations in
    PUNKT_ABBREVIATIONS and no learned collocations, sentence starters or orthographic statistics. A period,
    question or exclamation mark followed by white space ends a sentence unless the word before it is one of
    those abbreviations, or it follows a single letter or a number and the next word starts in lower case.
    The English model differs only where its statistics (learned from newswire) say otherwise, e.g. for
    abbreviations it knows and this list lacks.
    """
    return _punkt().tokenize(text)


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def meteor_tokenize(text: str) -> list[str]:
    """nltk's ``word_tokenize``: sentence split (see :func:`sentence_split`), then the improved Treebank
    word tokenizer on each sentence."""
    tok = _word_tokenizer()
    return [t for sent in sentence_split(text) for t in tok.tokenize(sent)]


def meteor_nltk(prediction: str, reference: str, wordnet, alpha: float = 0.9, beta: float = 3.0,
                gamma: float = 0.5) -> float:
    """evaluate's meteor of one pair: nltk ``meteor_score([word_tokenize(ref)], word_tokenize(pred))``."""
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([meteor_tokenize(reference)], meteor_tokenize(prediction), wordnet=wordnet,
                              alpha=alpha, beta=beta, gamma=gamma))


# ---------------------------------------------------------------------------------------------------------
# CIDEr (pycocoevalcap)
# ---------------------------------------------------------------------------------------------------------
def cider_scores(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, np.ndarray]:
    """pycocoevalcap CIDEr-D over the pairs (document frequencies from these references): (corpus, per pair)."""
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        return float("nan"), np.zeros(0)
    gts = {str(i): [r] for i, r in enumerate(references)}
    res = {str(i): [p] for i, p in enumerate(predictions)}
    score, scores = Cider().compute_score(gts, res)
    return float(score), np.asarray(scores, dtype=float)


# ---------------------------------------------------------------------------------------------------------
# The reg2rg protocol
# ---------------------------------------------------------------------------------------------------------
def _mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return None, None
    return float(arr.mean()), float(arr.std())


def reg2rg_scores(predictions: Sequence[str], references: Sequence[str], wordnet=None) -> dict[str, np.ndarray]:
    """Per-pair scores of the reg2rg protocol: arrays keyed by metric (no 'meteor' without WordNet)."""
    from tqdm import tqdm

    n = len(predictions)
    out: dict[str, list[float]] = {k: [] for k in REG2RG_METRICS if k not in ("meteor", "cider")}
    pairs = list(zip(predictions, references, strict=True))
    for p, r in tqdm(pairs, desc="BLEU/ROUGE", unit="pair", disable=None, leave=False):
        for order in range(1, 5):
            out[f"bleu_{order}"].append(bleu_13a([p], [r], max_order=order, smooth=True).bleu)
        for k, v in rouge_scores(p, r).items():
            out[k].append(v)
    arrays = {k: np.asarray(v, dtype=float) for k, v in out.items()}
    if wordnet is not None:
        arrays["meteor"] = np.asarray([meteor_nltk(p, r, wordnet) for p, r in
                                       tqdm(pairs, desc="METEOR", unit="pair", disable=None, leave=False)],
                                      dtype=float)
    arrays["cider"] = cider_scores(predictions, references)[1] if n else np.zeros(0)
    return arrays


def reg2rg_protocol(predictions: Sequence[str], references: Sequence[str], wordnet_path=None) -> dict:
    """The paper's text metrics for a set of (prediction, reference) pairs (prefixes already stripped).

    Returns ``{"n", "mean", "std", "overall", "unavailable"}``: mean and std (ddof 0) over pairs of each
    metric; ``overall`` holds the corpus-level values the authors printed beside them: BLEU-n computed once
    over all pairs, CIDEr's corpus score, and for METEOR and ROUGE the mean over pairs (evaluate's meteor
    returns that mean; its rouge aggregator estimates it by bootstrap). ``unavailable`` maps a metric that
    could not be computed (METEOR without WordNet) to the reason; its values are null.
    """
    predictions, references = list(predictions), list(references)
    wn = load_wordnet(wordnet_path)
    per_pair = reg2rg_scores(predictions, references, wordnet=wn.reader)
    mean, std, overall = {}, {}, {}
    for k in REG2RG_METRICS:
        if k in per_pair:
            mean[k], std[k] = _mean_std(per_pair[k])
        else:
            mean[k] = std[k] = None
    for order in range(1, 5):
        overall[f"bleu_{order}"] = (bleu_13a(predictions, references, max_order=order, smooth=True).bleu
                                    if predictions else None)
    overall["meteor"] = mean["meteor"]
    for k in ("rouge_1", "rouge_2", "rouge_l"):
        overall[k] = mean[k]
    overall["cider"] = cider_scores(predictions, references)[0] if predictions else None
    unavailable = {} if wn.reader is not None else {"meteor": wn.reason}
    return {"n": len(predictions), "mean": mean, "std": std, "overall": overall, "unavailable": unavailable}


# ---------------------------------------------------------------------------------------------------------
# The coco protocol (pycocoevalcap; Java)
# ---------------------------------------------------------------------------------------------------------
class CocoScorer:
    """pycocoevalcap's caption metrics over several groups of pairs with one PTB tokenizer run and one
    METEOR process (each Java start costs seconds). Use as a context manager, or call close()."""

    def __init__(self):
        from pycocoevalcap.meteor.meteor import Meteor

        self._meteor = Meteor()

    def close(self):
        m, self._meteor = self._meteor, None
        if m is not None:
            m.lock.acquire()
            try:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()
            finally:
                m.lock.release()
            # Meteor.__del__ would close the process again; it is gone already.
            m.__class__ = type("ClosedMeteor", (), {})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def tokenize(texts: dict[str, str]) -> dict[str, str]:
        """PTB-tokenise (lower-cased, punctuation removed) many texts in one Java call."""
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        if not texts:
            return {}
        # One line per text: the tokenizer keeps line structure; empty lines would shift the output.
        safe = {k: (" ".join(v.split()) or ".") for k, v in texts.items()}
        out = PTBTokenizer().tokenize({k: [{"caption": v}] for k, v in safe.items()})
        missing = set(safe) - set(out)
        if missing:
            raise RuntimeError(f"PTBTokenizer returned no line for {len(missing)} texts")
        return {k: v[0] for k, v in out.items()}

    def score(self, groups: dict[str, tuple[Sequence[str], Sequence[str]]]) -> dict[str, dict]:
        """``groups``: name -> (predictions, references). Returns name -> {"n", metric: corpus value}."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        texts = {}
        for g, (preds, refs) in groups.items():
            if len(preds) != len(refs):
                raise ValueError(f"group {g}: {len(preds)} predictions for {len(refs)} references")
            for i, (p, r) in enumerate(zip(preds, refs)):
                texts[f"p\t{g}\t{i}"] = p
                texts[f"r\t{g}\t{i}"] = r
        tok = self.tokenize(texts)
        results = {}
        for g, (preds, refs) in groups.items():
            n = len(preds)
            if n == 0:
                results[g] = {"n": 0, **{k: None for k in COCO_METRICS}}
                continue
            res = {str(i): [tok[f"p\t{g}\t{i}"]] for i in range(n)}
            gts = {str(i): [tok[f"r\t{g}\t{i}"]] for i in range(n)}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            meteor, _ = self._meteor.compute_score(gts, res)
            rouge, _ = Rouge().compute_score(gts, res)
            cider, _ = Cider().compute_score(gts, res)
            results[g] = {"n": n, "bleu_1": float(bleu[0]), "bleu_2": float(bleu[1]), "bleu_3": float(bleu[2]),
                          "bleu_4": float(bleu[3]), "meteor": float(meteor), "rouge_l": float(rouge),
                          "cider": float(cider)}
        return results


def java_available() -> str | None:
    """None when a `java` runs; else the reason (the coco protocol needs Java for PTBTokenizer and METEOR)."""
    import shutil
    import subprocess

    java = shutil.which("java")
    if java is None:
        return "java not found on PATH (pycocoevalcap's PTBTokenizer and METEOR need a Java runtime)"
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return f"java does not run: {err}"
    return None
