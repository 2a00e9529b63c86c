"""Where does a trained demo model's loss sit, and does the image lower it where a region's text decides
between normal and a finding? (issue 15: is the model reading the findings off the image, recalling training
reports, or writing the training reports' rates?)

For every scan of a finished run (`results/demo`: model, manifests, cache) the trained model's negative
log-likelihood of each target token under teacher forcing, per split. A region's *decision token* is the first
token of its text (after "The region k is <area>:"), where a normal region's text and one with a finding part.
The baseline measured in the same run is the image-blind one: each decision token's -log p under the frequency
of that first token among the training targets of the same area (what a model that never looks at the image
can do at best). The ratio of the model's decision NLL to the image-blind one: far below 1 on the training scans
and above 1 on the held-out ones is a model that recalls training reports or is over-confident where it is wrong
(an NLL weighs confident errors fully); read it beside the run's per-finding precision and recall, which say how
often the greedy decisions are right (docs/evaluation.md, "Where the loss sits").

    python benchmarks/target_loss.py [--results results/demo] [--out benchmarks/target_loss.json]
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import torch


def token_nll(model, results: Path, split: str) -> list[dict]:
    """Per scan: the target tokens (decoded), their NLL under the trained model, and the decision positions with
    their area: [{case_id, tokens, nll, decisions: [(position, area)]}]."""
    from reg2rg.dataset import Reg2RGDataset, make_batch, model_inputs
    from reg2rg.manifest import read_manifest

    manifest = read_manifest(results / "manifest" / f"{split}.parquet")
    dataset = Reg2RGDataset(manifest, results / "cache", model.config.input_size, split=None, text=True,
                            lfd=model.config.use_lfd)
    tok = model.tokenizer
    scans = []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            batch = make_batch([item], tok, model.config, rng=None, with_target=True, padding_side="right")
            inputs = model_inputs(batch, "cpu")
            logits = model(**inputs).logits[0, :-1].float()
            labels = inputs["labels"][0, 1:]
            keep = labels != -100
            nll = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="none").tolist()
            tokens = [tok.decode([t]) for t in labels[keep].tolist()]
            scans.append({"case_id": item["case_id"], "tokens": tokens, "nll": nll,
                          "decisions": decision_positions(tokens, batch["areas"][0])})
    return scans


def decision_positions(tokens: list[str], areas: list[str]) -> list[tuple[int, str]]:
    """(position, area) of the first text token of each region in a decoded target: the token after the ':'
    that ends "The region k is <area>:" (areas: the target's areas in order)."""
    out, k, text = [], 0, ""
    for j, t in enumerate(tokens):
        if k < len(areas) and text.rstrip().endswith(f"{areas[k]}:") and "The region" in text[-80:]:
            out.append((j, areas[k]))
            k += 1
            text = ""
        text += t
    return out


def image_blind(train: list[dict]) -> dict[str, Counter]:
    """Per area, how often each first text token starts a training target's region text."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for scan in train:
        for j, area in scan["decisions"]:
            counts[area][scan["tokens"][j]] += 1
    return counts


def summarise(scans: list[dict], prior: dict[str, Counter]) -> dict:
    """Mean NLL per token and per scan, and per area the model's and the image-blind decision NLL."""
    n_tok = sum(len(s["nll"]) for s in scans)
    total = sum(sum(s["nll"]) for s in scans)
    areas: dict[str, dict] = defaultdict(lambda: {"n": 0, "model": 0.0, "image_blind": 0.0})
    for s in scans:
        for j, area in s["decisions"]:
            c = prior.get(area, Counter())
            p = (c[s["tokens"][j]] + 0.5) / (sum(c.values()) + 0.5 * (len(c) + 1))  # add-half for unseen starts
            a = areas[area]
            a["n"] += 1
            a["model"] += s["nll"][j]
            a["image_blind"] += -math.log(p)
    dec_model = sum(a["model"] for a in areas.values())
    dec_blind = sum(a["image_blind"] for a in areas.values())
    rows = [{"area": k, "decisions": v["n"], "model_nll": round(v["model"] / v["n"], 3),
             "image_blind_nll": round(v["image_blind"] / v["n"], 3)} for k, v in sorted(areas.items())]
    return {"scans": len(scans), "target_tokens": n_tok, "nll_per_token": round(total / max(n_tok, 1), 4),
            "nll_per_scan": round(total / max(len(scans), 1), 2),
            "decision_share_of_nll": round(dec_model / total, 3) if total else None,
            "decision_nll": round(dec_model / max(sum(a["n"] for a in areas.values()), 1), 3),
            "image_blind_decision_nll": round(dec_blind / max(sum(a["n"] for a in areas.values()), 1), 3),
            "ratio_model_vs_image_blind": round(dec_model / dec_blind, 3) if dec_blind else None,
            "areas": rows}


def main(argv=None) -> int:
    from reg2rg.model import load_trained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/demo"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/target_loss.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = load_trained(args.results / "model").eval()
    scans = {split: token_nll(model, args.results, split) for split in ("train", "test")}
    prior = image_blind(scans["train"])
    out = {"results": str(args.results), **{split: summarise(s, prior) for split, s in scans.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for split in ("train", "test"):
        s = out[split]
        print(f"{split}: {s['scans']} scans, NLL {s['nll_per_token']} per token, {s['nll_per_scan']} per scan; "
              f"decision tokens {s['decision_share_of_nll']} of it; decision NLL {s['decision_nll']} against the "
              f"image-blind {s['image_blind_decision_nll']} (ratio {s['ratio_model_vs_image_blind']})")
    print(f"{'area':22s} {'n':>4s} {'train':>6s} {'blind':>6s} {'test':>6s} {'blind':>6s}")
    test_rows = {r["area"]: r for r in out["test"]["areas"]}
    for r in out["train"]["areas"]:
        t = test_rows.get(r["area"], {})
        print(f"{r['area']:22s} {r['decisions']:4d} {r['model_nll']:6.3f} {r['image_blind_nll']:6.3f} "
              f"{t.get('model_nll', float('nan')):6.3f} {t.get('image_blind_nll', float('nan')):6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
