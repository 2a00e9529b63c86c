"""Report length distributions (the paper's Fig. 3): kernel density of generated vs reference lengths in
words, and the KL divergence between them.

Lengths are white-space word counts of the reports with their RRA prefixes removed. Each side's density is
scipy's ``gaussian_kde`` (Scott's bandwidth) evaluated on one common grid of ``GRID_POINTS`` points from
max(0, min - 3 h) to max + 3 h (h: the larger of the two kernel widths, in words); each is normalised to
sum to one on the grid, and KL(reference || generated) = sum p * log((p + eps) / (q + eps)) with
eps = 1e-10, in nats. KL is null (with a reason) when a side has fewer than two distinct lengths, where a
KDE is undefined.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

GRID_POINTS = 512
EPSILON = 1e-10


def word_lengths(texts: Sequence[str]) -> np.ndarray:
    return np.asarray([len(str(t).split()) if isinstance(t, str) else 0 for t in texts], dtype=float)


def _kde(values: np.ndarray):
    from scipy.stats import gaussian_kde

    return gaussian_kde(values)


def _summary(v: np.ndarray) -> dict:
    if v.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max())}


def length_distributions(reference_lengths: Sequence[float], generated_lengths: Sequence[float]) -> dict:
    """Densities on a common grid and KL(reference || generated); see the module docstring."""
    ref = np.asarray(reference_lengths, dtype=float)
    gen = np.asarray(generated_lengths, dtype=float)
    out = {"unit": "words", "reference": _summary(ref), "generated": _summary(gen), "kl_ref_gen": None,
           "kl_reason": None, "bandwidth": "scott", "epsilon": EPSILON, "grid_points": GRID_POINTS,
           "grid": None, "density_reference": None, "density_generated": None}
    if len(np.unique(ref)) < 2 or len(np.unique(gen)) < 2:
        out["kl_reason"] = "a kernel density needs at least two distinct lengths on each side"
        return out
    kr, kg = _kde(ref), _kde(gen)
    h = max(float(np.sqrt(kr.covariance[0, 0])), float(np.sqrt(kg.covariance[0, 0])))
    lo = max(0.0, min(ref.min(), gen.min()) - 3 * h)
    hi = max(ref.max(), gen.max()) + 3 * h
    grid = np.linspace(lo, hi, GRID_POINTS)
    p, q = kr(grid), kg(grid)
    p, q = p / p.sum(), q / q.sum()
    out["kl_ref_gen"] = float(np.sum(p * np.log((p + EPSILON) / (q + EPSILON))))
    out["grid"] = [float(lo), float(hi)]
    step = (hi - lo) / (GRID_POINTS - 1)
    out["density_reference"] = (p / step).tolist()
    out["density_generated"] = (q / step).tolist()
    return out


def plot_lengths(dist: dict, path: str | Path, title: str | None = None) -> Path:
    """Write the density plot (PNG, matplotlib's Agg backend) of :func:`length_distributions`' result."""
    # An Agg canvas on a bare Figure: no pyplot, so no global backend state and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if dist.get("grid"):
        x = np.linspace(dist["grid"][0], dist["grid"][1], dist["grid_points"])
        ax.fill_between(x, dist["density_reference"], alpha=0.35, label="reference", color="tab:blue")
        ax.plot(x, dist["density_reference"], color="tab:blue")
        ax.fill_between(x, dist["density_generated"], alpha=0.35, label="generated", color="tab:orange")
        ax.plot(x, dist["density_generated"], color="tab:orange")
        kl = dist["kl_ref_gen"]
        ax.set_title(title or f"Report length (words); KL(ref || gen) = {kl:.4f}")
    else:
        for side, color in (("reference", "tab:blue"), ("generated", "tab:orange")):
            m = dist[side]["mean"]
            if m is not None:
                ax.axvline(m, color=color, label=f"{side} (mean)")
        ax.set_title(title or "Report length (words); KDE undefined")
    ax.set_xlabel("words per report")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
