"""Does a trained demo model's image side show the findings? A linear probe of its region features, per finding,
beside what the model writes (issue 15: is a finding the model does not write missing from the encoders' output,
or present there and not used by the decoder?).

For every scan of a finished demo run (`results/demo`: model, manifests, cache), each region's features are the
ones the decoder gets at "The region k is" (`Reg2RGModel.region_means`: the mean of the region's texture and
geometry tokens). For each finding of the demo (reg2rg.demo.FINDINGS, with the region it is drawn in), an L2
logistic regression on the training scans' features of that region predicts the scan's label; its balanced
accuracy on the held-out scans is set beside the model's own recall and precision for that label (metrics.json).
The baseline measured in the same run is the same probe on the features of an untrained model of the same
config and seed (what random encoders show), so the ratio says what training added.

    python benchmarks/finding_probe.py [--results results/demo] [--out benchmarks/finding_probe.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

L2 = 0.05  # on standardised features; 64 features, about 70 training scans


def region_features(model, results: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """([scans, areas, hidden] region features, zero for a region the scan lacks; [scans, labels] labels)."""
    from reg2rg.constants import REGIONS
    from reg2rg.dataset import Reg2RGDataset, make_batch, model_inputs
    from reg2rg.manifest import read_manifest

    manifest = read_manifest(results / "manifest" / f"{split}.parquet")
    dataset = Reg2RGDataset(manifest, results / "cache", model.config.input_size, split=None, text=False,
                            lfd=model.config.use_lfd)
    labels = manifest.set_index("case_id")["labels"]
    feats, labs = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            batch = make_batch([item], model.tokenizer, model.config, rng=None, with_target=False,
                               padding_side="left")
            inputs = model_inputs(batch, "cpu", labels=False)
            table = model.region_means(**{k: inputs[k] for k in ("input_ids", "global_volume", "region_crops",
                                                                 "region_masks", "region_counts") if k in inputs})
            full = np.zeros((len(REGIONS), table.shape[-1]), np.float32)
            for k, r in enumerate(item["regions"]):
                full[int(r)] = table[0, k].numpy()
            feats.append(full)
            labs.append(np.asarray(labels[item["case_id"]]))
    return np.stack(feats), np.stack(labs)


def probe(x_train, y_train, x_test, y_test) -> dict:
    """Balanced accuracy (mean of TPR and TNR) of an L2 logistic regression on the held-out scans."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    b = torch.tensor((x_test - mu) / sd, dtype=torch.float32)
    y = torch.tensor(y_train, dtype=torch.float32)
    w = torch.zeros(a.shape[1], requires_grad=True)
    c = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a @ w + c, y) + L2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (b @ w + c > 0).numpy()
    pos, neg = y_test == 1, y_test == 0
    tpr = float(pred[pos].mean()) if pos.any() else float("nan")
    tnr = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return {"balanced_accuracy": round(float(np.nanmean([tpr, tnr])), 3), "tpr": round(tpr, 3), "tnr": round(tnr, 3)}


def main(argv=None) -> int:
    from reg2rg.constants import ABNORMALITY_LABELS, REGIONS
    from reg2rg.demo import FINDINGS
    from reg2rg.model import build_model, config_from_preset, load_trained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/demo"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/finding_probe.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    trained = load_trained(args.results / "model").eval()
    torch.manual_seed(0)
    # the run's own model config (the trained folder's llm_base/ would be the trained decoder's start)
    config = config_from_preset(json.loads((args.results / "model" / "run_config.json").read_text())["model"])
    untrained = build_model(config, trained.tokenizer, load_pretrained_vision=False).eval()
    untrained.tokenizer = trained.tokenizer
    data = {name: {split: region_features(m, args.results, split) for split in ("train", "test")}
            for name, m in (("trained", trained), ("untrained", untrained))}
    metrics = json.loads((args.results / "metrics.json").read_text())
    written = {r["label"]: r for r in metrics["clinical_efficacy"]["per_label"]}
    rows = []
    for label, area in FINDINGS.values():
        j, k = ABNORMALITY_LABELS.index(label), REGIONS.index(area)
        row = {"finding": label, "region": area}
        for name, splits in data.items():
            (xa, ya), (xb, yb) = splits["train"], splits["test"]
            row["train_positive"], row["test_positive"] = int(ya[:, j].sum()), int(yb[:, j].sum())
            row[f"probe_{name}"] = probe(xa[:, k], ya[:, j], xb[:, k], yb[:, j])
        w = written.get(label, {})
        row["model_writes"] = {"recall": w.get("recall"), "precision": w.get("precision"),
                               "predicted": w.get("predicted")}
        rows.append(row)
    mean = {n: round(float(np.mean([r[f"probe_{n}"]["balanced_accuracy"] for r in rows])), 3) for n in data}
    out = {"results": str(args.results), "n_train": int(len(data["trained"]["train"][1])),
           "n_test": int(len(data["trained"]["test"][1])), "findings": rows,
           "mean_balanced_accuracy": mean, "ratio_trained_vs_untrained": round(mean["trained"] / mean["untrained"], 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'finding':30s} {'region':22s} {'+train':>6s} {'+test':>5s} {'probe':>6s} {'random':>6s} {'recall':>6s}")
    for r in rows:
        rec = r["model_writes"]["recall"]
        print(f"{r['finding']:30s} {r['region']:22s} {r['train_positive']:6d} {r['test_positive']:5d} "
              f"{r['probe_trained']['balanced_accuracy']:6.2f} {r['probe_untrained']['balanced_accuracy']:6.2f} "
              f"{rec if rec is None else round(rec, 2)!s:>6s}")
    print(f"mean balanced accuracy: trained {mean['trained']}, untrained {mean['untrained']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
