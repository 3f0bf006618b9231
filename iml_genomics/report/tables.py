"""The report's tables: univariate effects, gene-set results, biomarkers.

Columns are fixed whatever inputs exist (missing evidence is empty), and
documented in docs/report.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from iml_genomics import genesets as gs
from iml_genomics.io.readers import tested_rows, truthy
from iml_genomics.report.geneset_blocks import (BLOCK_VALUES, AnalysisValues, permutation_block_rows,
                                                permuted_statistics_blocks, residual_correlation)
from iml_genomics.report.inputs import ReportInputs, measured_genes

UNIVARIATE_COLUMNS = ["effect", "effect_type", "higher_in", "statistic", "statistic_type", "p_value",
                      "rank_test_p_value", "q_value"]

BIOMARKER_COLUMNS = [
    "rank", "gene_id", "symbol", "knockoff_selected", "explain_rank", "mean_abs_shap", "mean_shap", "shap_sd",
    "explain_rank_low", "explain_rank_high", "top_k_frequency", "permutation_importance",
    "permutation_importance_sd", "used_by_model", "knockoff_w", "knockoff_rank", "selection_frequency", "e_value",
    *UNIVARIATE_COLUMNS, "n_gene_sets", "gene_sets",
]

GENE_SET_COLUMNS = [
    "rank", "gene_set", "description", "source", "set_size", "n_measured", "n_query", "n_overlap", "overlap_genes",
    "expected_overlap", "odds_ratio", "p_value", "q_value", "es", "nes", "gsea_p_value", "gsea_q_value",
    "leading_edge", "n_leading_edge", "group_attribution", "group_attribution_mean", "group_attribution_rank",
    "significant", "null_method", "gsea_null_method", "inter_gene_correlation", "hypergeometric_p_value",
    "gene_permutation_p_value",
]

# sample-label permutation is used when the labels admit at least this many distinct rearrangements
# (below it the permutation p-value cannot go under 1e-3 and permutations repeat)
MIN_DISTINCT_PERMUTATIONS = 1000

# null_method / gsea_null_method values whose p-values account for the correlation between genes; only
# these can set the `significant` flag
CALIBRATED_NULLS = ("phenotype_permutation", "correlation_adjusted")

NULL_WORDS = {
    "phenotype_permutation": "sample-label permutation (the gene statistics recomputed on permuted labels, so "
                             "co-expressed genes move together as in the data)",
    "correlation_adjusted": "competitive test adjusted for the correlation between the set's genes (CAMERA's "
                            "variance inflation factor 1 + (m - 1) x mean inter-gene correlation, estimated from "
                            "the expression after removing the outcome's effect)",
    "hypergeometric": "hypergeometric, genes independent (no expression to estimate their correlation: not used "
                      "for the significant flag)",
    "gene_permutation": "gene permutation, genes independent (no expression to estimate their correlation: not "
                        "used for the significant flag)",
}


# values densified at once by univariate_effects on a sparse matrix (2^24 float64 = 128 MiB)
_BLOCK_VALUES = 1 << 24


def univariate_effects(adata, *, label_column: str, task: str, positive_class: str | None = None,
                       count_data: bool = False, cpm: bool = False) -> pd.DataFrame:
    """One row per gene: effect size and a test of association with the outcome.

    Parameters
    ----------
    adata : anndata.AnnData
        Cohort as loaded (values as in the file).
    label_column : str
    task : {'classification', 'regression'}
    positive_class : str, optional
        Binary classification: effects are positive class minus the others.
        Defaults to the last class in sorted order (as train does).
    count_data : bool
        Values are counts (preprocess.transform is log1p or log1p_cpm): the
        effect is the log2 fold change of means, log2((m1 + 1) / (m0 + 1)),
        and the tests use log1p values. Otherwise values are taken to be on
        a log (or otherwise final) scale and the effect is the difference of
        means in the units of the file (a log2 fold change when the file
        holds log2 values).
    cpm : bool
        Counts are first scaled to counts per million (log1p_cpm).

    Returns
    -------
    pandas.DataFrame
        Index gene_id; columns effect, effect_type, higher_in, statistic,
        statistic_type, p_value, rank_test_p_value, q_value.

        * binary: mean_difference or log2_fold_change, Welch t (p_value) and
          Mann-Whitney U (rank_test_p_value);
        * more than two classes: eta_squared, one-way ANOVA F and
          Kruskal-Wallis; higher_in is the class with the highest mean;
        * regression: Pearson r (t-test p-value) and Spearman rho p-value;
          higher_in is 'higher_outcome' or 'lower_outcome'.

        q_value is Benjamini-Hochberg over p_value.
    """
    from scipy import sparse

    y = adata.obs[label_column]
    genes = adata.var_names.astype(str)
    out = pd.DataFrame(index=pd.Index(genes, name="gene_id"), columns=UNIVARIATE_COLUMNS, dtype=object)
    X_all = adata.X
    lib = None
    if count_data and cpm:
        lib = np.asarray(X_all.sum(axis=1), dtype=float).reshape(-1, 1)
    # every quantity is per gene: a sparse single-cell matrix (10^5 cells) is densified a block of genes at a
    # time (about 2^24 values, 128 MiB), never whole; a dense matrix is one block as before
    n = max(1, X_all.shape[0])
    width = X_all.shape[1] if not sparse.issparse(X_all) else max(1, _BLOCK_VALUES // n)
    blocks = []
    for start in range(0, X_all.shape[1], width):
        part = X_all[:, start:start + width]
        X = part.toarray() if sparse.issparse(part) else np.asarray(part, dtype=float)
        blocks.append(_univariate_block(X, y, task=task, positive_class=positive_class, count_data=count_data,
                                        lib=lib))
    for col in ("effect", "effect_type", "higher_in", "statistic", "statistic_type", "p_value", "rank_test_p_value"):
        values = [b[col] for b in blocks]
        out[col] = values[0] if isinstance(values[0], str) else np.concatenate(values)
    for col in ("effect", "statistic", "p_value", "rank_test_p_value"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    out["q_value"] = gs.benjamini_hochberg(out["p_value"].to_numpy())
    return out


def _univariate_block(X, y, *, task, positive_class, count_data, lib):
    """univariate_effects' columns for a dense block of genes (cells x genes); ``lib``: CPM library sizes."""
    from scipy import stats

    out = {}
    if lib is not None:
        X = X / np.where(lib > 0, lib, 1.0) * 1e6
    Xt = np.log1p(np.clip(X, 0, None)) if count_data else X
    with np.errstate(divide="ignore", invalid="ignore"):
        if task == "regression":
            yv = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
            xc = Xt - Xt.mean(axis=0)
            yc = yv - yv.mean()
            r = (xc * yc[:, None]).sum(axis=0) / np.sqrt((xc ** 2).sum(axis=0) * (yc ** 2).sum())
            n = len(yv)
            t = r * np.sqrt((n - 2) / np.clip(1 - r ** 2, 1e-300, None))
            p = 2 * stats.t.sf(np.abs(t), n - 2)
            # Spearman = Pearson on ranks, per gene: spearmanr(Xt, y) would build the
            # full (p+1) x (p+1) matrix (3 GB at p = 20,000) to use one row of it
            xr = stats.rankdata(Xt, axis=0)
            xr = xr - xr.mean(axis=0)
            yr = stats.rankdata(yv)
            yr = yr - yr.mean()
            rs = (xr * yr[:, None]).sum(axis=0) / np.sqrt((xr ** 2).sum(axis=0) * (yr ** 2).sum())
            ts = rs * np.sqrt((n - 2) / np.clip(1 - rs ** 2, 1e-300, None))
            rho_p = 2 * stats.t.sf(np.abs(ts), n - 2)
            out["effect"], out["effect_type"] = r, "pearson_r"
            out["higher_in"] = np.where(r > 0, "higher_outcome", np.where(r < 0, "lower_outcome", ""))
            out["statistic"], out["statistic_type"], out["p_value"] = t, "pearson_t", p
            out["rank_test_p_value"] = rho_p
        else:
            labels = y.astype(str).to_numpy()
            classes = sorted(set(labels))
            if len(classes) == 2:
                pos = positive_class if positive_class in classes else classes[-1]
                neg = [c for c in classes if c != pos][0]
                a, b = Xt[labels == pos], Xt[labels == neg]
                if count_data:
                    effect = np.log2((X[labels == pos].mean(axis=0) + 1) / (X[labels == neg].mean(axis=0) + 1))
                    out["effect_type"] = "log2_fold_change"
                else:
                    effect = a.mean(axis=0) - b.mean(axis=0)
                    out["effect_type"] = "mean_difference"
                welch = stats.ttest_ind(a, b, axis=0, equal_var=False)
                mw = stats.mannwhitneyu(a, b, axis=0, alternative="two-sided")
                out["effect"] = effect
                out["higher_in"] = np.where(effect > 0, pos, np.where(effect < 0, neg, ""))
                out["statistic"], out["statistic_type"] = welch.statistic, "welch_t"
                out["p_value"], out["rank_test_p_value"] = welch.pvalue, mw.pvalue
            else:
                groups = [Xt[labels == c] for c in classes]
                anova = stats.f_oneway(*groups, axis=0)
                kw = stats.kruskal(*groups, axis=0)
                grand = Xt.mean(axis=0)
                between = sum(len(g) * (g.mean(axis=0) - grand) ** 2 for g in groups)
                total = ((Xt - grand) ** 2).sum(axis=0)
                means = np.stack([g.mean(axis=0) for g in groups])
                out["effect"], out["effect_type"] = between / total, "eta_squared"
                out["higher_in"] = np.array(classes, dtype=object)[means.argmax(axis=0)]
                out["statistic"], out["statistic_type"] = anova.statistic, "anova_f"
                out["p_value"], out["rank_test_p_value"] = anova.pvalue, kw.pvalue
    return out


# Both directions, named (two classes): which class a set is higher in, on what evidence, and its rank among the
# sets of that direction (the table's order). Added after the other columns so existing positions stay.
DIRECTION_COLUMNS = ["higher_in", "direction_score", "direction_rank"]
# Over-representation split by direction (two classes): the query genes higher in the positive class and those
# higher in the other class, each tested against the same background under the same null (BH within each list).
# The suffix names the side by role, not by label, so the columns are the same whatever the class names are.
ORA_DIRECTION_FIELDS = ["n_query", "n_overlap", "overlap_genes", "odds_ratio", "p_value", "q_value"]
ORA_DIRECTION_SIDES = ("positive_class", "other_class")
ORA_DIRECTION_COLUMNS = [f"{f}_{side}" for side in ORA_DIRECTION_SIDES for f in ORA_DIRECTION_FIELDS]
GENE_SET_COLUMNS = GENE_SET_COLUMNS + DIRECTION_COLUMNS + ORA_DIRECTION_COLUMNS


def set_directions(table: pd.DataFrame, sets: dict[str, list[str]], keys: pd.Series,
                   univariate: pd.DataFrame | None, metric: str,
                   classes: tuple[str, str] | None, q_threshold: float = 0.1) -> tuple[pd.DataFrame, str]:
    """Name the class each gene set is higher in, and rank the sets within each direction.

    A class's directional evidence is the smaller of its direction-split over-representation q-value
    (``q_value_positive_class`` / ``q_value_other_class``) and ``gsea_q_value`` when the rank test points
    to it (on the signed univariate statistic: the sign of the NES; on an unsigned score: NES > 0 and the
    sign of ``direction_score``). When only one class's evidence reaches ``q_threshold`` the set is named
    by it; when both do (a mixed set, genes of both classes in it) by the smaller directional p-value (the
    same tests' p-values); otherwise, or on a tie, by the sign of ``direction_score``. The NES of a mixed
    set follows its most extreme genes, which can be the minority, hence the over-representation lists.
    ``direction_rank`` counts in the table's order (the sort rule includes the direction-split q-values),
    so ``gene_sets.tsv`` filtered by ``higher_in`` is that class's ranked list.

    Parameters
    ----------
    table : pandas.DataFrame
        Gene-set rows in their final order, with ``gene_set``, ``nes``, ``gsea_p_value`` and (when the
        query was split) the direction-split p-values.
    sets : dict
        Set name -> member keys (symbols) tested.
    keys : pandas.Series
        Measured id -> key.
    univariate : pandas.DataFrame or None
        :func:`univariate_effects` (its ``statistic`` is positive when a gene is higher in the positive class).
    metric : str
        The rank-based test's gene score (:func:`ranking_scores`).
    classes : (positive, other) or None
        The two class names; None (regression, multiclass, unknown labels) leaves the direction empty.
    q_threshold : float
        Directional evidence names the class only at q <= this (``report.gene_set_fdr``).

    Returns
    -------
    table : pandas.DataFrame
        With ``higher_in`` (a class name, or '' when there is no direction), ``direction_score`` and
        ``direction_rank`` (1-based within each ``higher_in``, following the table's order).
    basis : str
        What ``direction_score`` is: the NES when the rank-based test ran on the signed univariate
        statistic (positive NES = the set's genes sit at the positive class's end), else the mean of the
        members' univariate statistics (an unsigned score such as mean |SHAP| or knockoff W has no
        direction), else 'none'.
    """
    table = table.copy()
    score = pd.Series(np.nan, index=table.index)
    basis = "none"
    if classes is not None and metric == "univariate" and "nes" in table:
        score = pd.to_numeric(table["nes"], errors="coerce")
        basis = "nes of the rank-based test on the univariate statistic"
    elif classes is not None and univariate is not None:
        stat = pd.to_numeric(univariate["statistic"], errors="coerce").dropna()
        stat.index = stat.index.astype(str)
        per_key = gs.collapse_scores(stat, keys)
        score = table["gene_set"].map(lambda name: float(per_key.reindex(sets.get(name, [])).mean())
                                      if len(per_key.reindex(sets.get(name, [])).dropna()) else np.nan)
        basis = "mean univariate statistic (welch_t) of the set's measured genes"
    table["direction_score"] = score.to_numpy(dtype=float)
    if classes is None:
        table["higher_in"] = ""
    else:
        s = table["direction_score"].to_numpy()
        by_score = np.where(s > 0, classes[0], np.where(s < 0, classes[1], ""))
        nes = pd.to_numeric(table["nes"], errors="coerce").to_numpy() if "nes" in table else np.full(len(table), np.nan)
        gp = pd.to_numeric(table["gsea_p_value"], errors="coerce").to_numpy() if "gsea_p_value" in table \
            else np.full(len(table), np.nan)
        nothing = np.full(len(table), np.nan)

        def column(name):
            return pd.to_numeric(table[name], errors="coerce").to_numpy() if name in table else nothing

        # the rank test points to a class: by its NES on the signed univariate statistic; on an unsigned
        # score (mean |SHAP|, knockoff W) a set enriched in the top genes (NES > 0) points where its genes
        # are higher on average (the sign of direction_score, the mean Welch t)
        toward = np.sign(nes) if metric == "univariate" else np.where(nes > 0, np.sign(s), 0.0)
        gq = column("gsea_q_value")
        p_evidence, q_evidence = [], []
        for side, sign in zip(ORA_DIRECTION_SIDES, (1.0, -1.0)):
            directional = np.nan_to_num(toward) == sign
            p_evidence.append(np.fmin(np.nan_to_num(column(f"p_value_{side}"), nan=np.inf),
                                      np.where(directional, np.nan_to_num(gp, nan=np.inf), np.inf)))
            q_evidence.append(np.fmin(np.nan_to_num(column(f"q_value_{side}"), nan=np.inf),
                                      np.where(directional, np.nan_to_num(gq, nan=np.inf), np.inf)))
        # both sides strong: the smaller p-value (q-values of two lists of different lengths are not
        # comparable, and BH ties them in blocks); neither: the sign of direction_score, since weak evidence
        # from the longer of two unequal lists (a SHAP top list split 40 / 10) must not outvote the set's
        # mean direction
        p_pos, p_other = p_evidence
        by_p = np.where(p_pos < p_other, classes[0], np.where(p_other < p_pos, classes[1], by_score))
        strong_pos, strong_other = (q <= q_threshold for q in q_evidence)
        # one side at q <= q_threshold names it; both: the smaller p-value; neither: the mean direction
        table["higher_in"] = np.where(strong_pos & strong_other, by_p,
                                      np.where(strong_pos, classes[0], np.where(strong_other, classes[1], by_score)))
    rank = table.groupby("higher_in", sort=False).cumcount() + 1
    table["direction_rank"] = pd.array(np.where(table["higher_in"] != "", rank, -1), dtype="Int64")
    table.loc[table["higher_in"] == "", "direction_rank"] = pd.NA
    return table, basis


def analysis_values(adata, *, count_data: bool = False, cpm: bool = False) -> np.ndarray:
    """The samples x genes values the univariate tests use (log1p of counts / CPM when asked)."""
    from scipy import sparse

    X = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X, dtype=float)
    if count_data and cpm:
        lib = X.sum(axis=1, keepdims=True)
        X = X / np.where(lib > 0, lib, 1.0) * 1e6
    return np.log1p(np.clip(X, 0, None)) if count_data else np.asarray(X, dtype=float)


def outcome_residuals(Xt: np.ndarray, y, task: str) -> np.ndarray:
    """Values with the outcome's effect removed: minus the class means (classes) or minus the
    least-squares fit on the outcome (regression). What is left is the co-expression that a
    gene-set null must respect."""
    if task == "regression":
        yv = pd.to_numeric(pd.Series(np.asarray(y)), errors="coerce").to_numpy(dtype=float)
        D = np.column_stack([np.ones_like(yv), yv])
        beta, *_ = np.linalg.lstsq(D, Xt, rcond=None)
        return Xt - D @ beta
    labels = pd.Series(np.asarray(y)).astype(str).to_numpy()
    R = np.array(Xt, dtype=float, copy=True)
    for c in np.unique(labels):
        rows = labels == c
        R[rows] -= R[rows].mean(axis=0)
    return R


def permuted_statistics(Xt: np.ndarray, y, task: str, perm: np.ndarray, *, positive_class: str | None = None,
                        with_p: bool = False, centered: tuple | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The univariate statistic of every gene (as :func:`univariate_effects`) for each row of label permutations.

    Parameters
    ----------
    Xt : (n, p) array
        Values as the univariate test uses them (:func:`analysis_values`).
    y : sequence
        Outcome per sample.
    task : {'classification', 'regression'}
    perm : (B, n) int array
        Each row a permutation of the samples; the outcome of sample i is ``y[perm[b, i]]``.
    positive_class : str, optional
        Two classes: the statistic is Welch t of this class minus the other (default: last in sorted order).
    with_p : bool
        Also return the p-values (Welch-Satterthwaite t, F, or t with n - 2 df).
    centered : tuple of two arrays, optional
        ``(Xt - column means, its square)``, when the caller loops over blocks of permutations
        (saves two copies of the matrix per block).

    Returns
    -------
    stat : (B, p) array (NaN where a gene is constant), p : (B, p) array or None
    """
    Xc, Xc2 = centered if centered is not None else (Xt - Xt.mean(axis=0), None)
    design = permuted_design(y, task, perm, positive_class=positive_class)
    return statistics_from_design(Xc, Xc2, design, with_p=with_p)


def permuted_design(y, task: str, perm: np.ndarray, *, positive_class: str | None = None,
                    codes: tuple | None = None) -> tuple:
    """What :func:`permuted_statistics` needs of a block of label permutations, whatever the genes.

    Parameters
    ----------
    y, task, perm, positive_class
        As :func:`permuted_statistics`.
    codes : (int array, sorted classes), optional
        The labels as codes into their sorted classes (classification), so the permuted labels are
        integers rather than strings.

    Returns
    -------
    tuple
        ``('regression', Y centred per row, its row sums of squares)``, ``('binary', I1, n1, n0)`` or
        ``('anova', [(Ic, nc) per class], g)``; the 0/1 designs are float (B, n) arrays.
    """
    n = perm.shape[1]
    if task == "regression":
        yv = pd.to_numeric(pd.Series(np.asarray(y)), errors="coerce").to_numpy(dtype=float)
        Y = yv[perm]
        Y = Y - Y.mean(axis=1, keepdims=True)
        return ("regression", Y, (Y ** 2).sum(axis=1, keepdims=True))
    if codes is None:
        uniq, code = np.unique(pd.Series(np.asarray(y)).astype(str).to_numpy(), return_inverse=True)
        classes = [str(c) for c in uniq]  # sorted as sorted() sorts strings
        code = code.reshape(-1).astype(np.min_scalar_type(len(classes)))
    else:
        code, classes = codes
    L = code[perm]
    if len(classes) == 2:
        pos = positive_class if positive_class in classes else classes[-1]
        I1 = (L == classes.index(pos)).astype(float)
        n1 = I1.sum(axis=1, keepdims=True)
        return ("binary", I1, n1, n - n1)
    parts = []
    for c in range(len(classes)):
        Ic = (L == c).astype(float)
        parts.append((Ic, Ic.sum(axis=1, keepdims=True)))
    return ("anova", parts, len(classes))


def statistics_from_design(Xc: np.ndarray, Xc2: np.ndarray | None, design: tuple, *,
                           with_p: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The permuted statistics (and p-values) of the centred genes ``Xc`` (its square ``Xc2`` or None)
    under a :func:`permuted_design`: every quantity is per gene, so a block of genes gives its columns."""
    from scipy import special  # the distributions' ufuncs: t.sf / f.sf without the per-call overhead

    n = Xc.shape[0]
    pval = None
    kind = design[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "regression":
            _, Y, Ysq = design
            r = (Y @ Xc) / np.sqrt(Ysq * (Xc2 if Xc2 is not None else Xc ** 2).sum(axis=0))
            stat = r * np.sqrt((n - 2) / np.clip(1 - r ** 2, 1e-300, None))
            if with_p:
                pval = 2 * special.stdtr(n - 2, -np.abs(stat))
            return stat, pval
        if kind == "binary":
            _, I1, n1, n0 = design
            if Xc2 is None:
                Xc2 = Xc ** 2
            S1, Q1 = I1 @ Xc, I1 @ Xc2
            S0, Q0 = Xc.sum(axis=0) - S1, Xc2.sum(axis=0) - Q1
            m1, m0 = S1 / n1, S0 / n0
            v1, v0 = (Q1 - n1 * m1 ** 2) / (n1 - 1), (Q0 - n0 * m0 ** 2) / (n0 - 1)
            a, b = v1 / n1, v0 / n0
            stat = (m1 - m0) / np.sqrt(a + b)
            if with_p:
                df = (a + b) ** 2 / (a ** 2 / (n1 - 1) + b ** 2 / (n0 - 1))
                pval = 2 * special.stdtr(df, -np.abs(stat))
            return stat, pval
        _, parts, g = design
        total = (Xc2 if Xc2 is not None else Xc ** 2).sum(axis=0)
        between = np.zeros((len(parts[0][0]), Xc.shape[1]))
        for Ic, nc in parts:
            between += (Ic @ Xc) ** 2 / nc
        stat = (between / (g - 1)) / ((total - between) / (n - g))
        if with_p:
            pval = special.fdtrc(g - 1, n - g, stat)
        return stat, pval


@dataclass
class GeneSetAnalysis:
    """Result of :func:`analyse_gene_sets`."""

    table: pd.DataFrame
    sets: dict[str, list[str]]
    keys: pd.Series
    group_per_sample: pd.DataFrame | None
    summary: dict = field(default_factory=dict)
    # the rank-based test's score per key (collapsed), so a plot can redraw its running sums; None without one
    ranking: pd.Series | None = None


def _attribution_matrix(inputs: ReportInputs, positive_class: str | None) -> pd.DataFrame | None:
    """Samples x genes SHAP values (rows per class kept; |.| averaged later)."""
    attr = inputs.attributions
    if attr is None:
        return None
    genes = [c for c in attr.columns if c not in ("sample_id", "class", "base_value", "model_output")]
    return attr.set_index(attr["sample_id"].astype(str))[genes]


def ranking_scores(inputs: ReportInputs, univariate: pd.DataFrame | None, metric: str,
                   *, min_nonzero_fraction: float = 0.5) -> tuple[pd.Series, str]:
    """Gene scores for the rank-based test and the name of the metric used.

    ``auto`` uses mean |SHAP| from explain when at least
    ``min_nonzero_fraction`` of the genes have a non-zero value, else the
    signed univariate statistic, else mean |SHAP| anyway, else the knockoff W.
    A sparse model (L1) gives most genes exactly zero attribution; a running
    sum over a ranking that is mostly one big tie says little, and its NES
    is inflated because random sets rarely reach a non-zero gene.
    """
    choices = {
        "mean_abs_shap": (lambda: inputs.gene_ranking.set_index("gene_id")["mean_abs_shap"]
                          if inputs.gene_ranking is not None else None),
        "univariate": (lambda: univariate["statistic"] if univariate is not None else None),
        "knockoff_w": (lambda: inputs.knockoffs.set_index("gene_id")["w"] if inputs.knockoffs is not None else None),
    }
    order = [metric] if metric != "auto" else ["mean_abs_shap", "univariate", "mean_abs_shap", "knockoff_w"]
    for i, name in enumerate(order):
        s = choices[name]()
        if s is None:
            continue
        s = pd.to_numeric(s, errors="coerce").dropna()
        s.index = s.index.astype(str)
        if metric == "auto" and i == 0 and (s != 0).mean() < min_nonzero_fraction:
            continue
        return s, name
    return pd.Series(dtype=float), "none"


def query_genes(inputs: ReportInputs, univariate: pd.DataFrame | None,
                top_k: int) -> tuple[list[str], str, list[str] | None]:
    """Genes tested for over-representation, where they come from, and the background.

    The background is the genes that *could* have been picked by the same
    procedure: the genes select tested, or the genes that entered the model;
    ``None`` means every measured gene. Using all measured genes when a filter
    chose the candidates would make the filter's favourite pathways look enriched.
    """
    if inputs.knockoffs is not None:
        ko = inputs.knockoffs
        sel = ko[truthy(ko["selected"])]["gene_id"].astype(str).tolist()
        if sel:
            return sel, f"knockoff selection ({len(sel)} genes)", tested_rows(ko)["gene_id"].astype(str).tolist()
    if inputs.gene_ranking is not None:
        gr = inputs.gene_ranking.sort_values(["rank", "gene_id"], kind="mergesort")
        pool = gr[truthy(gr["used"])] if "used" in gr.columns else gr
        gr = gr[pd.to_numeric(gr["mean_abs_shap"], errors="coerce") > 0]
        genes = gr["gene_id"].astype(str).head(top_k).tolist()
        return (genes, f"top {len(genes)} genes of the explain ranking with mean |SHAP| > 0",
                pool["gene_id"].astype(str).tolist())
    if univariate is not None:
        u = univariate.sort_values(["p_value"], kind="mergesort")
        genes = u.index.astype(str)[:top_k].tolist()
        return genes, f"top {len(genes)} genes by univariate p-value", None
    return [], "none", None


def selection_units(inputs: ReportInputs) -> pd.Series | None:
    """Tested gene id -> selection unit when ``select`` ran group knockoffs, else None.

    Group knockoffs control the FDR over groups and mark every member of a
    selected group as selected; counting those members as separate
    discoveries in over-representation would turn one (possibly false)
    discovery into many. A unit is the gene's group (the ``group`` column of
    knockoff_selection.tsv), or the gene itself when its group is empty.
    None when no unit has more than one gene (gene-level counting is then the same).
    """
    ko = inputs.knockoffs
    if ko is None or "group" not in ko.columns:
        return None
    rows = tested_rows(ko)
    group = rows["group"].fillna("").astype(str).str.strip()
    genes = rows["gene_id"].astype(str)
    units = pd.Series(np.where(group != "", "group:" + group, "gene:" + genes), index=genes.to_numpy())
    return units if units.nunique() < len(units) else None


def _unit_over_representation(query: list[str], pool: list[str], units: pd.Series, keys: pd.Series,
                              sets: dict[str, list[str]], correlation=None) -> pd.DataFrame:
    """Over-representation with a selected group counted once.

    Units replace genes in the hypergeometric test: N = units among the
    tested genes, n = selected units, K = units with at least one member in
    the set, x = selected units with at least one member in the set (a set is
    hit by a selected group if any of its members is in the set).
    ``overlap_genes`` lists the member symbols of those selected units that are in the set.
    """
    pool_units = units.reindex(pool).dropna()
    unit_keys: dict[str, set[str]] = {}
    for gene, unit in pool_units.items():
        key = keys.get(gene)
        if isinstance(key, str):
            unit_keys.setdefault(unit, set()).add(key)
    key_units: dict[str, set[str]] = {}
    for unit, ks in unit_keys.items():
        for key in ks:
            key_units.setdefault(key, set()).add(unit)
    chosen = set(units.reindex(query).dropna())
    unit_sets = {name: sorted(set().union(*(key_units.get(k, set()) for k in members)))
                 for name, members in sets.items()}
    ora = gs.over_representation(sorted(chosen), set(unit_keys), unit_sets, correlation=correlation)
    ora["overlap_genes"] = [";".join(sorted(set(members) & set().union(*(unit_keys[u] for u in unit_sets[name]
                                                                          if u in chosen))))
                            for name, members in sets.items()]
    return ora


def _query_overlaps(pval: np.ndarray, id_names, keys: pd.Series, top_k: int, ora_sets,
                    stat: np.ndarray | None = None) -> list[np.ndarray]:
    """Overlap of every set with the univariate query list (the top ``top_k`` ids by p-value, as
    :func:`query_genes` builds it) of each row of permuted p-values: (n_sets, B).

    With the permuted statistics ``stat`` (same shape as ``pval``) three arrays are returned: the whole
    list, then the top ``top_k`` ids by p-value among those with a positive statistic and among those
    with a negative one (the direction-split lists of :func:`_direction_queries`, rebuilt on each
    permutation); else a list of one.
    """
    from scipy import sparse

    names = list(ora_sets)
    key_list = sorted({g for members in ora_sets.values() for g in members})
    key_pos = {k: i for i, k in enumerate(key_list)}
    rows, cols = [], []
    for j, name in enumerate(names):
        for g in ora_sets[name]:
            rows.append(key_pos[g])
            cols.append(j)
    membership = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(key_list), len(names)))
    id_key = np.array([key_pos.get(k, -1) if isinstance(k, str) else -1
                       for k in keys.reindex(id_names).to_numpy()])
    pval = np.where(np.isnan(pval), np.inf, pval)
    lists = [(pval, None)]
    if stat is not None:
        lists += [(np.where(stat > 0, pval, np.inf), 1.0), (np.where(stat < 0, pval, np.inf), -1.0)]
    out = []
    for pv, sign in lists:
        top = np.argsort(pv, axis=1, kind="stable")[:, :top_k]
        col = np.where(id_key[top] >= 0, id_key[top], len(key_list))
        if sign is not None:
            # fewer than top_k ids in this direction: the rest of the row is padding, not a query gene
            col = np.where(sign * np.take_along_axis(stat, top, axis=1) > 0, col, len(key_list))
        hit = np.zeros((len(top), len(key_list) + 1))
        np.put_along_axis(hit, col, 1.0, axis=1)  # the last column (unmapped ids, padding) is dropped
        out.append(np.asarray(membership.T @ hit[:, :-1].T))
    return out


def _direction_queries(query: list[str], query_source: str, univariate: pd.DataFrame | None,
                       classes: tuple[str, str] | None, top_k: int) -> tuple[list[str], list[str]] | None:
    """The query lists of each direction: (higher in the positive class, higher in the other class);
    None without two classes or without the univariate statistic.

    For the univariate query each list is the top ``top_k`` genes by p-value among those with a
    positive (negative) statistic, built as :func:`query_genes` builds the unsigned list: the unsigned
    top ``top_k`` is dominated by whichever class differs from a heterogeneous rest in more genes (4 of
    the top 50 were higher in NK cells in the PBMC check, docs/benchmarks.md). A knockoff selection or a
    SHAP top list is a fixed set of genes: it is split by the sign of each gene's univariate statistic.
    A gene with a zero or missing statistic is in neither list.

    An unsigned list mixes genes up in either class, so a set hit by both halves looks enriched
    "somewhere"; tested separately, each list names the class its sets are higher in (issue 12, item 4).
    """
    if classes is None or univariate is None:
        return None
    stat = pd.to_numeric(univariate["statistic"], errors="coerce")
    stat.index = stat.index.astype(str)
    if query_source.startswith("top ") and "univariate" in query_source:
        u = univariate.assign(_s=stat.to_numpy()).sort_values(["p_value"], kind="mergesort")
        return (u.index[u["_s"] > 0].astype(str)[:top_k].tolist(), u.index[u["_s"] < 0].astype(str)[:top_k].tolist())
    s = stat.reindex([str(g) for g in query]).to_numpy(dtype=float)
    return ([g for g, v in zip(query, s) if v > 0], [g for g, v in zip(query, s) if v < 0])


def analyse_gene_sets(inputs: ReportInputs, collection: gs.GeneSetCollection, *, gene_map: pd.Series | None,
                      univariate: pd.DataFrame | None, min_size: int, max_size: int, top_k: int,
                      n_permutations: int, ranking_metric: str, q_threshold: float, random_state,
                      gene_ids: list[str] | None = None, classes: tuple[str, str] | None = None,
                      adata=None, label_column: str | None = None, task: str | None = None,
                      positive_class: str | None = None, count_data: bool = False, cpm: bool = False,
                      null: str = "auto", block_values: int | None = None) -> GeneSetAnalysis:
    """Over-representation, prerank test and group attributions for every set.

    ``classes`` = (positive class, other class) for a two-class outcome: every set is named by the class it
    is higher in (:func:`set_directions`).

    The nulls are chosen per cohort (``null='auto'``): with the expression and
    labels (``adata``, ``label_column``) a test whose gene list or ranking is
    the univariate statistic uses sample-label permutation when the labels
    admit at least :data:`MIN_DISTINCT_PERMUTATIONS` distinct rearrangements,
    and otherwise (or for a SHAP / knockoff ranking or query, which cannot be
    recomputed per permutation here) the correlation-adjusted competitive test.
    ``null='correlation_adjusted'`` forces the latter. Without the cohort the
    genes-independent nulls are reported and no set is flagged. The
    ``null_method`` (over-representation) and ``gsea_null_method`` (rank test)
    columns say which null each row used.

    The expression is read a block of about ``block_values`` values at a time (default
    :data:`~iml_genomics.report.geneset_blocks.BLOCK_VALUES`; :mod:`iml_genomics.report.geneset_blocks`),
    never densified whole: the results do not depend on it (see that module for the one case of last bits).

    Returns a :class:`GeneSetAnalysis` whose table has the columns
    :data:`GENE_SET_COLUMNS`, sorted by the rule in docs/report.md.
    """
    if null not in ("auto", "correlation_adjusted"):
        raise ValueError(f"null must be 'auto' or 'correlation_adjusted', got {null!r}")
    genes = gene_ids or measured_genes(inputs)
    keys = gs.map_gene_ids(genes, gene_map)
    universe = pd.unique(keys.to_numpy())
    sets, set_table = gs.restrict_gene_sets(collection, universe, min_size=min_size, max_size=max_size)
    in_any = set().union(*sets.values()) if sets else set()
    all_set_genes = set(gs.normalise_ids(g for genes_ in collection.sets.values() for g in genes_))
    summary = {
        "gene_set_file": collection.source, "n_sets_in_file": len(collection), "n_sets_tested": len(sets),
        "min_set_size": min_size, "max_set_size": max_size, "n_measured_ids": len(genes),
        "n_keys": len(universe), "n_ids_mapped_by_table": int(gene_map.index.isin(genes).sum())
        if gene_map is not None else 0,
        "n_ids_in_gene_set_file": int(keys.isin(all_set_genes).sum()),
        "n_keys_in_gene_set_file": int(len(set(universe) & all_set_genes)),
        "n_keys_in_tested_sets": len(in_any),
    }
    if summary["n_keys_in_gene_set_file"] == 0:
        # not one measured gene in the file: the identifiers differ (probes or Ensembl ids against
        # symbols, mouse against human), a mistake to fix rather than a result to report
        from iml_genomics.errors import InputDataError
        from iml_genomics.io.ids import show_id

        file_gene = next((g for members in collection.sets.values() for g in members), "")
        raise InputDataError(
            f"{collection.path or collection.source}: none of the genes in the gene-set file is a measured gene "
            f"(file: '{show_id(file_gene, 60)}', ...; measured: '{show_id(genes[0] if genes else '', 60)}', ..."
            f"{'; after the gene map' if gene_map is not None else ''}). Pass --gene-map to map the measured ids "
            f"to the file's symbols, or use a gene-set file with the same identifiers.")
    if not sets:
        # every set is outside the size limits: an empty table would read as "no pathway is involved";
        # refused like a file with no measured gene, so the user changes the limits (issue 12, Contracts)
        from iml_genomics.errors import InputDataError

        sizes = set_table["n_measured"]
        raise InputDataError(
            f"{collection.path or collection.source}: no gene set can be tested: none of the {len(set_table)} sets "
            f"has between {min_size} and {max_size} measured genes (largest: {int(sizes.max())}, smallest: "
            f"{int(sizes.min())} measured genes). Lower --min-set-size (report.min_set_size) or raise "
            f"--max-set-size (report.max_set_size).")
    query, query_source, pool = query_genes(inputs, univariate, top_k)
    query_keys = sorted(set(keys.reindex(query).dropna()))
    split = _direction_queries(query, query_source, univariate, classes, top_k)
    background = set(universe) if pool is None else set(keys.reindex(pool).dropna())
    summary.update(query_source=query_source, n_query_ids=len(query), n_query_keys=len(query_keys),
                   n_background_keys=len(background))
    ora_sets = {name: [g for g in members if g in background] for name, members in sets.items()}
    scores, metric = ranking_scores(inputs, univariate, ranking_metric)
    signed = metric in ("univariate", "knockoff_w")
    summary.update(ranking_metric=metric, ranking_signed=signed, n_permutations=n_permutations)

    # ---- which null: decided per cohort (docs/report.md, "Nulls")
    have_cohort = (adata is not None and label_column is not None and label_column in adata.obs.columns
                   and univariate is not None)
    values = y = None
    n_distinct = 0.0
    if have_cohort:
        # every sample, exactly as univariate_effects uses them, so permuted statistics match the observed ones;
        # served a block at a time (a dense copy of 10^5 cells was 1.6 GB, and the nulls made four)
        values = AnalysisValues(adata.X, count_data=count_data, cpm=cpm, budget=block_values or BLOCK_VALUES)
        y = adata.obs[label_column].to_numpy()
        n_distinct = gs.distinct_permutations(y)
    can_permute = have_cohort and null == "auto" and n_distinct >= MIN_DISTINCT_PERMUTATIONS
    ora_null = ("phenotype_permutation" if can_permute and query_source.startswith("top ")
                and "univariate" in query_source else "correlation_adjusted" if have_cohort else "hypergeometric")
    rank_null = ("phenotype_permutation" if can_permute and metric == "univariate"
                 else "correlation_adjusted" if have_cohort else "gene_permutation")
    summary.update(null_method=ora_null, gsea_null_method=rank_null, n_distinct_label_permutations=n_distinct,
                   min_distinct_label_permutations=MIN_DISTINCT_PERMUTATIONS)

    id_names = [str(g) for g in adata.var_names] if have_cohort else []
    rho = None
    if have_cohort:
        # CAMERA's inter-gene correlation of each set, from the residuals of the measured ids of its keys
        # (several probes of one symbol all count: their correlation only makes the adjustment conservative)
        col_of_key: dict[str, list[int]] = {}
        id_keys = keys.reindex(id_names).to_numpy()
        for j, k in enumerate(id_keys):
            if isinstance(k, str):
                col_of_key.setdefault(k, []).append(j)
        members = [np.array([c for g in sets[name] for c in col_of_key.get(g, ())], dtype=np.int64)
                   for name in sets]
        rho = residual_correlation(values, y, task, members)
        rho = np.clip(np.nan_to_num(rho), 0.0, None)  # as limma's allow.neg.cor = FALSE: never liberalise
    perm = None
    if "phenotype_permutation" in (ora_null, rank_null):
        rng = np.random.default_rng([int(random_state or 0), 12])  # its own stream: gene permutations unchanged
        rows = permutation_block_rows(len(y), values.budget)

        def permutation_blocks():
            # drawn a block at a time, in the order one (n_permutations, n) matrix would be: same permutations
            for b0 in range(0, n_permutations, rows):
                block = np.empty((min(rows, n_permutations - b0), len(y)), dtype=np.int64 if len(y) > 2**31 - 1
                                 else np.int32)  # half the bytes of the stacked int64 rows, the same indices
                for i in range(len(block)):
                    block[i] = rng.permutation(len(y))
                yield block

        perm = permutation_blocks

    null_overlaps = null_stat = None
    null_direction: tuple = (None, None)
    collapsed_index = gs.collapse_scores(scores, keys).index if len(scores) else pd.Index([])
    if perm is not None:
        # one pass over the permutations: the statistics feed the rank test, their p-values the query lists
        scored = set(scores.index) if rank_null == "phenotype_permutation" else set()
        stat_cols = np.array([j for j, g in enumerate(id_names) if g in scored], dtype=np.int64)
        stat_ids = [id_names[j] for j in stat_cols]
        chunks_o, chunks_s = [], []
        chunks_d: tuple[list, list] = ([], [])
        for stat, pval in permuted_statistics_blocks(values, y, task, perm(), positive_class=positive_class,
                                                     with_p=ora_null == "phenotype_permutation"):
            if ora_null == "phenotype_permutation":
                over = _query_overlaps(pval, id_names, keys, top_k, ora_sets,
                                       stat=stat if split is not None else None)
                chunks_o.append(over[0])
                if split is not None:
                    chunks_d[0].append(over[1])
                    chunks_d[1].append(over[2])
            if rank_null == "phenotype_permutation":
                # collapsed per block: the padded (B, keys, probes per key) array stays small
                mat, key_index = gs.collapse_matrix(np.nan_to_num(stat[:, stat_cols]), stat_ids, keys)
                where = key_index.get_indexer(collapsed_index)
                chunks_s.append(np.where(where >= 0, mat[:, np.maximum(where, 0)], 0.0))
        null_overlaps = np.concatenate(chunks_o, axis=1) if chunks_o else None
        null_direction = tuple(np.concatenate(c, axis=1) if c else None for c in chunks_d)
        null_stat = np.concatenate(chunks_s, axis=0) if chunks_s else None
    ora = gs.over_representation(query_keys, background, ora_sets,
                                 correlation=rho if ora_null == "correlation_adjusted" else None,
                                 null_overlaps=null_overlaps)
    units = selection_units(inputs) if query_source.startswith("knockoff selection") else None
    if units is None:
        summary.update(ora_unit="gene")
    else:
        # group knockoffs: a selected group is one discovery, whatever its size (the gene-level correlation
        # adjustment stays: the correlation between units is at most that between their genes)
        ora = _unit_over_representation(query, pool, units, keys, sets,
                                        correlation=rho if ora_null == "correlation_adjusted" else None)
        summary.update(ora_unit="group", n_query_units=int(units.reindex(query).nunique()),
                       n_background_units=int(units.reindex(pool).nunique()))
    direction_ora = []
    if split is not None:
        # the same background, null and counting unit as the unsigned list; BH within each half
        summary.update(n_query_ids_positive_class=len(split[0]), n_query_ids_other_class=len(split[1]))
        for side, half, null_half in zip(ORA_DIRECTION_SIDES, split, null_direction):
            corr = rho if ora_null == "correlation_adjusted" else None
            if units is None:
                part = gs.over_representation(sorted(set(keys.reindex(half).dropna())), background, ora_sets,
                                              correlation=corr, null_overlaps=null_half)
            else:
                part = _unit_over_representation(half, pool, units, keys, sets, correlation=corr)
            part = part.rename(columns={"n_selected": "n_query"})[["gene_set", *ORA_DIRECTION_FIELDS]]
            part["gene_set"] = part["gene_set"].astype(object)
            direction_ora.append(part.rename(columns={f: f"{f}_{side}" for f in ORA_DIRECTION_FIELDS}))
    if ora_null != "correlation_adjusted" or "inter_gene_correlation" not in ora:
        ora["inter_gene_correlation"] = rho if rho is not None else np.nan
    # with no set tested the empty frames carry float 'gene_set' columns, which merge refuses
    ora["gene_set"] = ora["gene_set"].astype(object)
    table = set_table[set_table["tested"]].drop(columns="tested").merge(
        ora.drop(columns="n_measured").rename(columns={"n_selected": "n_query"}), on="gene_set", how="left")
    for part in direction_ora:
        table = table.merge(part, on="gene_set", how="left")
    if len(scores):
        collapsed = gs.collapse_scores(scores, keys)
        sub = {k: [g for g in v if g in collapsed.index] for k, v in sets.items()}
        extra = {}
        if rank_null == "phenotype_permutation":
            extra["null_scores"] = null_stat
        elif rank_null == "correlation_adjusted":
            k_sub = np.array([len(v) for v in sub.values()], dtype=float)
            extra["vif"] = 1 + (k_sub - 1) * rho
        pre = gs.prerank(collapsed, sub, n_permutations=n_permutations, random_state=random_state, **extra)
        pre = pre.drop(columns="n_measured").rename(columns={"p_value": "gsea_p_value", "q_value": "gsea_q_value"})
        pre["gene_set"] = pre["gene_set"].astype(object)
        table = table.merge(pre, on="gene_set", how="left")
    attr = _attribution_matrix(inputs, None)
    per_sample = None
    if attr is not None:
        overall, per_sample = gs.group_attributions(attr, keys, sets)
        overall["gene_set"] = overall["gene_set"].astype(object)
        table = table.merge(overall.rename(columns={"sum_abs_shap": "group_attribution",
                                                    "mean_abs_shap": "group_attribution_mean",
                                                    "rank": "group_attribution_rank"})
                            .drop(columns="n_attributed_genes"), on="gene_set", how="left")
    table["source"] = collection.source
    table["null_method"] = ora_null
    table["gsea_null_method"] = rank_null if len(scores) else ""
    for col in GENE_SET_COLUMNS:
        if col not in table.columns:
            table[col] = np.nan if col not in ("leading_edge", "overlap_genes", *(
                f"overlap_genes_{side}" for side in ORA_DIRECTION_SIDES)) else ""
    gsea_q = pd.to_numeric(table["gsea_q_value"], errors="coerce")
    if not signed:
        # an unsigned score (mean |SHAP|) has no meaningful "depleted" direction
        gsea_q = gsea_q.where(pd.to_numeric(table["nes"], errors="coerce") > 0)
    ora_q = pd.to_numeric(table["q_value"], errors="coerce")
    split_q = [pd.to_numeric(table[f"q_value_{side}"], errors="coerce") for side in ORA_DIRECTION_SIDES]
    split_p = [pd.to_numeric(table[f"p_value_{side}"], errors="coerce") for side in ORA_DIRECTION_SIDES]
    # the direction-split lists count in the order (a set over-represented among the genes higher in one
    # class leads that class's list) but not in the flag, whose families stay the two documented ones
    best_q = pd.concat([ora_q, gsea_q, *split_q], axis=1).min(axis=1)
    # only p-values whose null respects the correlation between genes can flag a set
    flag_ora = ora_q if ora_null in CALIBRATED_NULLS else ora_q * np.nan
    flag_gsea = gsea_q if rank_null in CALIBRATED_NULLS else gsea_q * np.nan
    # a set is flagged when either test rejects; the union of two BH families at
    # q/2 each has FDR <= q (FDP of a union <= sum of the two FDPs), at q each it would not
    n_families = int(flag_ora.notna().any()) + int(flag_gsea.notna().any())
    flag_q = q_threshold / max(1, n_families)
    table["significant"] = (pd.concat([flag_ora, flag_gsea], axis=1).min(axis=1) <= flag_q).to_numpy()
    table["_best_q"] = best_q.fillna(np.inf)
    table["_p"] = pd.concat([pd.to_numeric(table["p_value"], errors="coerce"), *split_p], axis=1).min(
        axis=1).fillna(np.inf)
    table["_attr"] = -pd.to_numeric(table["group_attribution"], errors="coerce").fillna(-np.inf)
    table = table.sort_values(["_best_q", "_p", "_attr", "gene_set"], kind="mergesort")
    table["rank"] = np.arange(1, len(table) + 1)
    table, basis = set_directions(table, sets, keys, univariate, metric, classes, q_threshold)
    summary.update(positive_class=classes[0] if classes else None, other_class=classes[1] if classes else None,
                   direction_basis=basis)
    table = table[GENE_SET_COLUMNS].reset_index(drop=True)
    summary["n_significant_sets"] = int(table["significant"].sum())
    summary["q_threshold"] = q_threshold
    summary["flag_q_threshold"] = flag_q
    return GeneSetAnalysis(table=table, sets=sets, keys=keys, group_per_sample=per_sample, summary=summary,
                           ranking=collapsed if len(scores) else None)


def build_biomarkers(inputs: ReportInputs, *, gene_ids: list[str], keys: pd.Series,
                     univariate: pd.DataFrame | None, gene_set_table: pd.DataFrame | None,
                     sets: dict[str, list[str]] | None) -> pd.DataFrame:
    """One row per measured gene with every piece of evidence side by side.

    Sort rule (docs/report.md): knockoff-selected genes first; then genes
    with a non-zero mean |SHAP| by explain rank; then univariate q-value
    (ascending); then |effect| (descending); ties by gene id.
    """
    frame = pd.DataFrame(index=pd.Index([str(g) for g in gene_ids], name="gene_id"))
    key = keys.reindex(frame.index)
    # an unmapped id (its key is only its normalised self) shows as itself, never upper-cased or shortened
    frame["symbol"] = np.where(key.to_numpy() == gs.normalise_ids(frame.index), frame.index.to_numpy(),
                               key.to_numpy())
    if inputs.gene_ranking is not None:
        gr = inputs.gene_ranking.copy()
        gr["gene_id"] = gr["gene_id"].astype(str)
        gr = gr.drop_duplicates("gene_id").set_index("gene_id")
        mapping = {"rank": "explain_rank", "mean_abs_shap": "mean_abs_shap", "mean_shap": "mean_shap",
                   "sd": "shap_sd", "rank_low": "explain_rank_low", "rank_high": "explain_rank_high",
                   "top_k_frequency": "top_k_frequency", "permutation_importance": "permutation_importance",
                   "permutation_importance_sd": "permutation_importance_sd", "used": "used_by_model"}
        for src, dst in mapping.items():
            if src in gr.columns:
                frame[dst] = gr[src].reindex(frame.index)
    if inputs.knockoffs is not None:
        ko = inputs.knockoffs.copy()
        ko = tested_rows(ko)  # untested genes keep empty knockoff columns: not tested is not "not selected"
        ko["gene_id"] = ko["gene_id"].astype(str)
        ko = ko.drop_duplicates("gene_id").set_index("gene_id")
        frame["knockoff_w"] = ko["w"].reindex(frame.index)
        frame["knockoff_selected"] = truthy(ko["selected"]).reindex(frame.index)
        for src, dst in (("rank", "knockoff_rank"), ("selection_frequency", "selection_frequency"),
                         ("e_value", "e_value")):
            if src in ko.columns:
                frame[dst] = ko[src].reindex(frame.index)
    if univariate is not None:
        for col in UNIVARIATE_COLUMNS:
            frame[col] = univariate[col].reindex(frame.index)
    if gene_set_table is not None and sets is not None:
        significant = gene_set_table.loc[gene_set_table["significant"].astype(bool), "gene_set"].tolist()
        member = gs.set_membership(sets, significant)
        lists = [member.get(k, []) for k in key.to_numpy()]
        frame["n_gene_sets"] = [len(x) for x in lists]
        frame["gene_sets"] = [";".join(x) for x in lists]
    for col in BIOMARKER_COLUMNS:
        if col not in frame.columns and col not in ("rank", "gene_id"):
            frame[col] = "" if col in ("gene_sets", "effect_type", "higher_in", "statistic_type") else np.nan
    frame = frame.reset_index()
    shap = pd.to_numeric(frame["mean_abs_shap"], errors="coerce")
    explain_key = pd.to_numeric(frame["explain_rank"], errors="coerce").where(shap > 0)
    keys_sort = pd.DataFrame({
        "sel": ~frame["knockoff_selected"].map(lambda v: v is True or v == True),  # noqa: E712
        "explain": explain_key.fillna(np.inf),
        "q": pd.to_numeric(frame["q_value"], errors="coerce").fillna(np.inf),
        "effect": -pd.to_numeric(frame["effect"], errors="coerce").abs().fillna(-np.inf),
        "gene_id": frame["gene_id"],
    })
    order = keys_sort.sort_values(["sel", "explain", "q", "effect", "gene_id"], kind="mergesort").index
    frame = frame.loc[order].reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1)
    if inputs.knockoffs is None:
        frame["knockoff_selected"] = ""
    return frame[BIOMARKER_COLUMNS]
