"""Anchors for chosen samples: a short rule on gene thresholds that keeps the model's prediction (Ribeiro et al. 2018).

An anchor of sample x is a conjunction of predicates ``gene <= t`` / ``gene > t`` that x satisfies, such that
the model predicts x's class for (almost) every sample that satisfies it. Here:

- predicates: for each of the top ``explain.anchors_top_genes`` genes of ``gene_ranking.tsv`` and each inner
  boundary t of its ``explain.anchors_n_bins`` cohort quantile bins, the side of t that holds x's value; a rule
  uses a gene at most once;
- perturbations (the distribution precision is measured on: the cohort given the rule): a random cohort
  sample provides every gene, then each gene of the rule is redrawn from its cohort values that satisfy the
  rule's predicate on it, independently per gene (as the Anchors tabular sampler does); the other genes keep
  their joint distribution;
- precision: the fraction of perturbations the model assigns to x's predicted class; its lower bound is the
  one-sided 95% Clopper-Pearson (exact binomial) bound, not KL-LUCB: every candidate rule of a step gets the
  same ``anchors_n_samples`` draws, which costs more model calls than a bandit but is simple and exact;
- search: a beam search (``anchors_beam_width`` rules kept, ``anchors_max_predicates`` steps). Each step screens
  every candidate on a tenth of the draws and gives the full ``anchors_n_samples`` (fresh) draws to the
  ``4 x anchors_beam_width`` most precise ones (one successive-halving round). A step stops the
  search when a candidate's lower bound reaches ``anchors_threshold``; among those the rule with the highest
  coverage wins. Without such a rule the most precise rule of the last step is reported, marked
  ``precision_reached = False``;
- the reported ``precision`` and ``precision_ci_low`` come from fresh draws of the chosen rule, not from the
  draws that selected it (the search's maximum is biased upwards);
- ``coverage``: the fraction of cohort samples that satisfy the rule.

Why not ``alibi``'s AnchorTabular: alibi 0.9.6 is under the Business Source License (not open source), pins
numpy < 2 (this project runs numpy 2) and pulls spaCy and transformers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iml_genomics.explain.methods import MethodOutput
from iml_genomics.explain.perturb import (check_top_genes, dense_columns, dense_row, predicted_classes,
                                          skipped_without_samples)

ANCHOR_COLUMNS = ["sample_id", "rule", "n_predicates", "precision", "precision_ci_low", "coverage",
                  "predicted_class", "precision_reached", "n_perturbations", "explains"]
CONFIDENCE = 0.95
SCREEN_KEEP = 4  # candidates per beam slot that get the full draws after screening
_MAX_CELLS = 10_000_000


def precision_lower_bound(hits, n, confidence: float = CONFIDENCE):
    """One-sided Clopper-Pearson lower bound of a binomial proportion (``hits`` successes of ``n``)."""
    from scipy.stats import beta

    hits = np.asarray(hits, dtype=float)
    low = beta.ppf(1.0 - confidence, hits, n - hits + 1.0)
    return np.where(hits > 0, low, 0.0)


def _boundaries(cohort: np.ndarray, n_bins: int) -> list:
    """Inner quantile boundaries of each gene (distinct values only)."""
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    out = []
    for j in range(cohort.shape[1]):
        b = np.unique(np.quantile(cohort[:, j], qs))
        # a boundary at the gene's maximum splits nothing (<= holds for every sample)
        out.append(b[b < cohort[:, j].max()])
    return out


class _Anchor:
    """The search of one sample; a rule is a tuple of predicates (gene position, threshold, is_upper)."""

    def __init__(self, pipeline, X, row, cols, cohort, classes, boundaries, rng, n_samples):
        self.pipeline, self.X, self.cols, self.cohort, self.classes = pipeline, X, cols, cohort, classes
        self.x = dense_row(X, row)
        self.rng, self.n_samples = rng, n_samples
        self.target = int(predicted_classes(pipeline, self.x[None, :], classes)[0])
        v = self.x[cols]
        self.predicates = [(j, float(t), bool(v[j] <= t)) for j in range(len(cols)) for t in boundaries[j]]

    @staticmethod
    def holds(rule, values: np.ndarray) -> np.ndarray:
        """Rows of ``values`` (samples x candidate genes) that satisfy every predicate of ``rule``."""
        ok = np.ones(len(values), dtype=bool)
        for j, t, upper in rule:
            ok &= (values[:, j] <= t) if upper else (values[:, j] > t)
        return ok

    def perturb(self, rule, n: int) -> np.ndarray:
        """``n`` draws (samples x all genes) from the cohort given ``rule``.

        A random cohort sample provides every gene; each gene of the rule is then redrawn from its cohort
        values that satisfy the rule's predicate on it, independently per gene, as the Anchors tabular sampler
        does. Per gene rather than from the samples satisfying the whole rule: a long rule can hold for a
        handful of samples, and their few rows would make any rule look precise.
        """
        rows = self.rng.integers(0, len(self.cohort), size=n)
        block = dense_columns(self.X[rows], slice(None))
        for j in sorted({p[0] for p in rule}):
            allowed = self.cohort[self.holds([p for p in rule if p[0] == j], self.cohort), j]
            block[:, self.cols[j]] = allowed[self.rng.integers(0, len(allowed), size=n)]
        return block

    def precision_hits(self, rules, n: int) -> np.ndarray:
        """Perturbations (of ``n`` per rule) the model assigns to the sample's class, for every rule."""
        hits = np.empty(len(rules), dtype=int)
        step = max(1, _MAX_CELLS // max(self.X.shape[1], 1))
        for i, rule in enumerate(rules):
            same = 0
            for start in range(0, n, step):
                block = self.perturb(rule, min(step, n - start))
                same += int((predicted_classes(self.pipeline, block, self.classes) == self.target).sum())
            hits[i] = same
        return hits

    def coverage(self, rule) -> float:
        return float(self.holds(rule, self.cohort).mean())

    def search(self, threshold: float, beam_width: int, max_predicates: int):
        """(rule, reached) by beam search; the empty rule when the model predicts x's class almost everywhere."""
        n = self.n_samples
        if precision_lower_bound(self.precision_hits([()], n), n)[0] >= threshold:
            return (), True
        beam = [()]
        best = ()
        for _ in range(max_predicates):
            cands, seen = [], set()
            for rule in beam:
                used = {p[0] for p in rule}
                for p in self.predicates:
                    if p[0] in used:
                        continue
                    key = tuple(sorted(rule + (p,)))
                    if key not in seen:
                        seen.add(key)
                        cands.append(key)
            if not cands:
                break
            if len(cands) > SCREEN_KEEP * beam_width:
                # screening: a tenth of the draws for every candidate, the full draws (fresh) for the most
                # precise few only; a successive-halving round instead of KL-LUCB's adaptive sampling
                pre = self.precision_hits(cands, max(20, n // 10))
                keep = np.lexsort((np.arange(len(cands)), -pre))[:SCREEN_KEEP * beam_width]
                cands = [cands[i] for i in sorted(keep)]
            hits = self.precision_hits(cands, n)
            low = precision_lower_bound(hits, n)
            cover = np.array([self.coverage(c) for c in cands])
            ok = np.flatnonzero(low >= threshold)
            if len(ok):
                # highest coverage, then highest precision, then the first candidate (a deterministic order)
                i = ok[np.lexsort((ok, -hits[ok], -cover[ok]))[0]]
                return cands[i], True
            order = np.lexsort((np.arange(len(cands)), -cover, -hits))
            beam = [cands[i] for i in order[:beam_width]]
            best = beam[0]
        return best, False


def rule_text(rule, genes) -> str:
    """``g1 > 2.31 AND g7 <= 0.5``; genes in candidate order."""
    if not rule:
        return "(any sample)"
    return " AND ".join(f"{genes[j]} {'<=' if upper else '>'} {t:.6g}" for j, t, upper in sorted(rule))


def anchor_sample(pipeline, X, row, cols, cohort, classes, boundaries, *, threshold, beam_width, max_predicates,
                  n_samples, seed) -> dict:
    """The anchor of one sample: its rule, precision (fresh draws), lower bound, coverage, predicted class."""
    search = _Anchor(pipeline, X, row, cols, cohort, classes, boundaries, np.random.default_rng(seed), n_samples)
    rule, reached = search.search(threshold, beam_width, max_predicates)
    hits = int(search.precision_hits([rule], n_samples)[0])
    return {"rule": rule, "reached": reached, "precision": hits / n_samples,
            "precision_ci_low": float(precision_lower_bound(hits, n_samples)), "coverage": search.coverage(rule),
            "target": search.target}


def _anchor_task(pipeline, X, row, cols, cohort, classes, boundaries, kw, seed):
    return anchor_sample(pipeline, X, row, cols, cohort, classes, boundaries, seed=seed, **kw)


def not_applicable(classes) -> str | None:
    """Why anchors do not apply (a regression model has no predicted class), or None."""
    return "anchors explain a predicted class and this model is a regression" if classes is None else None


def validate(explain_cfg, *, gene_ids, sample_ids=None, classes=None) -> None:
    """Refuse a regression model and ``explain.anchors_top_genes`` above the matrix's genes, before any work.

    Raises
    ------
    iml_genomics.errors.ConfigError
    """
    from iml_genomics.errors import ConfigError
    from iml_genomics.explain.perturb import check_gene_count

    if classes is None and explain_cfg.samples:
        raise ConfigError("explain.methods anchors: anchors explain a predicted class and this model is a "
                          "regression; remove anchors from explain.methods (use lime for a local explanation).")
    check_gene_count("anchors_top_genes", explain_cfg.anchors_top_genes, len(gene_ids))


def run(ctx) -> MethodOutput:
    """Anchors for every sample of ``explain.samples``: ``anchors.tsv`` (explains = model); classifiers only."""
    cfg = ctx.explain_cfg
    validate(cfg, gene_ids=ctx.gene_ids, classes=ctx.classes)
    if not cfg.samples:
        summary, warnings = skipped_without_samples("anchors", "anchor rules")
        return MethodOutput(summary=summary, warnings=warnings)
    genes = check_top_genes(ctx, "anchors_top_genes", cfg.anchors_top_genes)
    cols = np.array([ctx.gene_column(g) for g in genes], dtype=int)
    cohort = dense_columns(ctx.X, cols)
    bounds = _boundaries(cohort, cfg.anchors_n_bins)
    kw = {"threshold": cfg.anchors_threshold, "beam_width": cfg.anchors_beam_width,
          "max_predicates": cfg.anchors_max_predicates, "n_samples": cfg.anchors_n_samples}
    rows = ctx.sample_rows()
    # one seed per (seed, row): a sample's anchor is the same whichever samples are explained with it
    results = ctx.backend.map(_anchor_task, [(ctx.pipeline, ctx.X, r, cols, cohort, ctx.classes, bounds, kw,
                                              [int(ctx.random_state), int(r)]) for r in rows])
    records, warnings = [], []
    for sid, res in zip(cfg.samples, results):
        records.append({"sample_id": sid, "rule": rule_text(res["rule"], genes), "n_predicates": len(res["rule"]),
                        "precision": res["precision"], "precision_ci_low": res["precision_ci_low"],
                        "coverage": res["coverage"], "predicted_class": str(ctx.classes[res["target"]]),
                        "precision_reached": bool(res["reached"]), "n_perturbations": cfg.anchors_n_samples,
                        "explains": "model"})
        if not res["reached"]:
            warnings.append(f"explain: warning: anchors: no rule of up to {cfg.anchors_max_predicates} predicates "
                            f"reaches precision {cfg.anchors_threshold:g} for sample {sid}; the most precise "
                            f"one is reported (precision_reached = False)")
    table = pd.DataFrame.from_records(records, columns=ANCHOR_COLUMNS)
    summary = {"threshold": cfg.anchors_threshold, "bound": "one-sided 95% Clopper-Pearson lower bound",
               "n_candidate_genes": len(genes), "n_bins": cfg.anchors_n_bins,
               "n_perturbations": cfg.anchors_n_samples, "beam_width": cfg.anchors_beam_width,
               "max_predicates": cfg.anchors_max_predicates,
               "samples": {r["sample_id"]: {k: r[k] for k in ("rule", "precision", "precision_ci_low", "coverage",
                                                             "precision_reached")} for r in records}}
    return MethodOutput(tables={"anchors.tsv": table}, summary=summary, warnings=warnings)
