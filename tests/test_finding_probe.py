"""benchmarks/finding_probe.py's probe: it finds a finding that the features show and not one they do not."""
from __future__ import annotations

import numpy as np

from benchmark_scripts import load_benchmark


def test_probe_tells_features_that_show_a_finding_from_noise():
    probe = load_benchmark("finding_probe").probe
    rng = np.random.default_rng(0)
    y_train, y_test = rng.random(70) < 0.3, rng.random(24) < 0.4
    x_train, x_test = rng.normal(size=(70, 64)), rng.normal(size=(24, 64))
    shown = probe(x_train + 3.0 * y_train[:, None] * (np.arange(64) < 4), y_train.astype(float),
                  x_test + 3.0 * y_test[:, None] * (np.arange(64) < 4), y_test.astype(int))
    noise = probe(x_train, y_train.astype(float), x_test, y_test.astype(int))
    assert shown["balanced_accuracy"] >= 0.9 > 0.75 >= noise["balanced_accuracy"], (shown, noise)
