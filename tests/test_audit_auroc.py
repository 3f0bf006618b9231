"""audit.binary_auroc, the fast AUROC inside the audit's bootstrap intervals, is scikit-learn's roc_auc_score."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from iml_genomics.audit import binary_auroc


def test_binary_auroc_equals_roc_auc_score_with_ties_and_imbalance():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(500):
        n = int(rng.integers(2, 200))
        truth = rng.random(n) < rng.uniform(0.05, 0.95)
        # few distinct values: many ties across and within the classes (they count one half)
        score = np.round(rng.random(n) + 0.3 * truth, int(rng.integers(0, 3)))
        if 0 < truth.sum() < n:
            assert abs(binary_auroc(truth, score) - roc_auc_score(truth, score)) < 1e-12
            checked += 1
    assert checked > 400
    # perfect, reversed and constant scores
    truth = np.array([False, False, True, True])
    assert binary_auroc(truth, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert binary_auroc(truth, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert binary_auroc(truth, np.ones(4)) == 0.5


def test_binary_auroc_is_nan_without_both_classes():
    assert np.isnan(binary_auroc(np.ones(5, dtype=bool), np.arange(5.0)))
    assert np.isnan(binary_auroc(np.zeros(5, dtype=bool), np.arange(5.0)))
