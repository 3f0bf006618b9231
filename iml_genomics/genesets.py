"""Gene sets: GMT reading, identifier harmonisation, over-representation,
a rank-based (prerank GSEA-style) set test and group attributions.

Everything here works on *keys*: harmonised gene identifiers (stripped,
upper-case symbols). Measured gene ids (probes, Ensembl ids, symbols) are
turned into keys by :func:`map_gene_ids`, optionally through a mapping
table; gene sets are reduced to the keys that were measured (the
background is the measured genes, never the whole GMT).

Several measured ids can share one key (several probes of one gene). How
they are collapsed depends on the question:

* over-representation: a key is *selected* when any of its ids is selected;
* rank-based test: a key's score is the score of its id with the largest
  absolute score (the "max probe" rule of GSEA's collapse step);
* group attributions: the |SHAP| of every measured id whose key is in the
  set is summed (two probes of one gene both carry model attribution).
"""

from __future__ import annotations

import gzip
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from iml_genomics.errors import InputDataError
from iml_genomics.io.ids import show_id

__all__ = [
    "GeneSetCollection", "read_gmt", "normalise_ids", "read_gene_map", "map_gene_ids", "restrict_gene_sets",
    "benjamini_hochberg", "over_representation", "prerank", "group_attributions", "collapse_scores", "set_membership",
    "inter_gene_correlation", "tail_p_values", "distinct_permutations", "collapse_matrix", "camera_rank_test",
]


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class GeneSetCollection:
    """Gene sets as read from a GMT file.

    Attributes
    ----------
    sets : dict of str -> list of str
        Set name -> member genes as written (order kept, duplicates removed).
    descriptions : dict of str -> str
        Set name -> the GMT's second column (often a URL or an id).
    source : str
        File name the sets came from (for the ``source`` output column).
    path : str
        The file's path as given (for error messages).
    """

    sets: dict[str, list[str]]
    descriptions: dict[str, str] = field(default_factory=dict)
    source: str = ""
    path: str = ""

    def __len__(self) -> int:
        return len(self.sets)


# The largest real set (a GO root term, ~18,000 genes) is a line of ~200 KB; a "line" of more
# than this is not a GMT record (a file of NUL bytes, say) and is refused before it fills memory.
_MAX_GMT_LINE = 16 * 2**20


def _bounded_lines(fh, path: Path):
    """The lines of ``fh``, refusing one longer than :data:`_MAX_GMT_LINE` characters."""
    lineno = 0
    while True:
        line = fh.readline(_MAX_GMT_LINE + 1)
        if not line:
            return
        lineno += 1
        if len(line) > _MAX_GMT_LINE:
            raise InputDataError(f"{path}: line {lineno} is longer than {_MAX_GMT_LINE} characters; not a GMT "
                                 f"record. Is this a GMT file?")
        yield line


def read_gmt(path: str | Path) -> GeneSetCollection:
    """Read a GMT file (plain or gzipped).

    Each non-empty line is ``name<TAB>description<TAB>gene<TAB>gene...``.
    Blank lines and lines starting with ``#`` are skipped; empty gene fields
    (trailing tabs) are ignored.

    Raises
    ------
    InputDataError
        Missing or unreadable file, a line with fewer than three fields or
        without genes, or a set name used twice; the message names the file
        and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: gene-set file not found. Check --gene-sets (or report.gene_sets).")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    sets: dict[str, list[str]] = {}
    descriptions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # -sig: a BOM is not part of a name
            for lineno, line in enumerate(_bounded_lines(fh, path), start=1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith("#"):
                    continue
                fields = line.split("\t")
                name = fields[0].strip()
                genes = [g.strip() for g in fields[2:] if g.strip()]
                if len(fields) < 3 or not name or not genes:
                    raise InputDataError(
                        f"{path}: line {lineno}: not a GMT record (need name<TAB>description<TAB>genes..., "
                        f"got {len(fields)} tab-separated field(s)). Fix the line or use a GMT file.")
                if name in sets:
                    raise InputDataError(f"{path}: line {lineno}: gene set '{show_id(name)}' already defined at "
                                         f"line {first_line[name]}. Set names must be unique.")
                bad = next((t for t in (name, *genes) if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in t)), None)
                if bad is not None:
                    # a carriage return or escape code in a name would split or garble gene_sets.tsv
                    raise InputDataError(f"{path}: line {lineno}: '{show_id(bad)}' contains a control character. "
                                         f"Remove it from the set name or gene.")
                sets[name] = list(dict.fromkeys(genes))
                descriptions[name] = fields[1].strip()
                first_line[name] = lineno
    except UnicodeDecodeError:
        raise InputDataError(f"{path}: line {lineno + 1}: not UTF-8 text; is this a GMT file?") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; bad deflate data zlib.error
        raise InputDataError(f"{path}: cannot read gene-set file near line {lineno + 1} ({show_id(exc)}). Is it "
                             f"complete and in the format its name says?") from None
    if not sets:
        raise InputDataError(f"{path}: no gene sets found (empty GMT file).")
    return GeneSetCollection(sets=sets, descriptions=descriptions, source=path.name, path=str(path))


def normalise_ids(ids) -> np.ndarray:
    """Harmonised keys: surrounding whitespace removed, upper case, Ensembl version dropped.

    Human gene symbols are upper case by convention (HGNC), mouse symbols
    are capitalised; comparing upper-case keys matches both spellings.
    ``ENSG00000141510.17`` becomes ``ENSG00000141510`` so versioned and
    unversioned Ensembl ids (count matrix against GMT or gene map) match.
    """
    from iml_genomics.gene_ids import strip_ensembl_version

    return np.array([strip_ensembl_version(str(i).strip()).upper() for i in ids], dtype=object)


_SYMBOL_COLUMNS = ("symbol", "gene_symbol", "hgnc_symbol", "gene_name", "symbols", "description")


def read_gene_map(path: str | Path, gene_ids, *, id_column: str | None = None,
                  symbol_column: str | None = None, aliases: dict[str, str] | None = None) -> pd.Series:
    """Read a table mapping measured gene ids (probes, Ensembl ids) to symbols.

    Parameters
    ----------
    path : str or Path
        CSV/TSV (optionally gzipped) with a header.
    gene_ids : sequence of str
        The measured ids, used to find the id column when not given.
    id_column : str, optional
        Column holding the measured ids; by default the column sharing the
        most values with ``gene_ids``.
    symbol_column : str, optional
        Column holding symbols; by default the first of symbol, gene_symbol,
        hgnc_symbol, gene_name, symbols, description that exists. A symbol
        column gives its first symbol (``"A /// B"`` -> ``A``); a description
        column is parsed by :func:`iml_genomics.gene_ids.symbol_from_description`
        (``"CST3 Cystatin C (amyloid ...)"`` -> ``CST3``, ``"GB DEF = Rer1
        protein"`` -> nothing), never its first word blindly.
    aliases : dict, optional
        Alias -> approved symbol (:func:`iml_genomics.gene_ids.read_alias_map`).

    Returns
    -------
    pandas.Series
        Index: measured id (as in the table, stripped); values: harmonised
        symbol key. Ids whose row names no symbol are left out (they keep
        their own id). ``attrs["sources"]`` says where each symbol came from.
    """
    from iml_genomics.gene_ids import apply_aliases, looks_like_descriptions, symbols_from_column
    from iml_genomics.io import read_table

    table = read_table(path, "gene map")
    measured = {str(g).strip() for g in gene_ids}
    if id_column is None:
        overlap = {c: table[c].str.strip().isin(measured).sum() for c in table.columns}
        id_column = max(overlap, key=lambda c: (overlap[c], -list(table.columns).index(c)))
        if overlap[id_column] == 0:
            raise InputDataError(f"{path}: no column of the gene map holds the measured gene ids (e.g. "
                                 f"'{show_id(sorted(measured)[0], 60)}'). Check the file or set "
                                 f"report.gene_map_id_column.")
    elif id_column not in table.columns:
        raise InputDataError(f"{path}: gene map id column '{show_id(id_column)}' not found; available columns: "
                             f"{', '.join(show_id(c, 60) for c in table.columns[:20])}. Fix "
                             f"report.gene_map_id_column.")
    if symbol_column is None:
        lower = {c.lower(): c for c in table.columns}
        candidates = [lower[c] for c in _SYMBOL_COLUMNS if c in lower and lower[c] != id_column]
        others = [c for c in table.columns if c != id_column]
        if not candidates and not others:
            raise InputDataError(f"{path}: gene map needs an id column and a symbol column; found only "
                                 f"'{show_id(id_column)}'. Add a symbol column.")
        symbol_column = candidates[0] if candidates else others[-1]
    elif symbol_column not in table.columns:
        raise InputDataError(f"{path}: gene map symbol column '{show_id(symbol_column)}' not found; available "
                             f"columns: {', '.join(show_id(c, 60) for c in table.columns[:20])}. Fix "
                             f"report.gene_map_symbol_column.")
    ids = table[id_column].str.strip()
    is_description = looks_like_descriptions(symbol_column, table[symbol_column])
    symbols, sources = symbols_from_column(table[symbol_column], is_description=is_description)
    symbols, sources = apply_aliases(symbols, sources, aliases)
    keep = (ids != "") & symbols.notna()
    series = pd.Series(normalise_ids(symbols[keep]), index=ids[keep].to_numpy(), name="symbol")
    src = pd.Series(sources[keep].to_numpy(), index=ids[keep].to_numpy())
    # a probe listed twice keeps its first symbol: deterministic, and the table says nothing better
    first = ~series.index.duplicated(keep="first")
    series, src = series[first], src[first]
    series.attrs.update(id_column=id_column, symbol_column=symbol_column, source=str(path),
                        sources=dict(zip(src.index, src.to_numpy())))
    return series


def map_gene_ids(gene_ids, gene_map: pd.Series | None = None) -> pd.Series:
    """Harmonised key of every measured gene id.

    Without a map the key is the id itself, normalised (strip, upper case).
    With a map, ids absent from it fall back to their own normalised id, so
    a table that already uses symbols still works.

    Returns
    -------
    pandas.Series
        Index: measured gene id (in the given order); values: key.
    """
    from iml_genomics.gene_ids import strip_ensembl_version

    gene_ids = [str(g) for g in gene_ids]
    keys = normalise_ids(gene_ids)
    if gene_map is not None:
        mapped = gene_map.reindex([g.strip() for g in gene_ids]).to_numpy()
        # versioned measured ids against an unversioned map (or the reverse): match on the stable id
        unversioned = gene_map.groupby([strip_ensembl_version(str(i)) for i in gene_map.index], sort=False).first()
        by_stable = unversioned.reindex([strip_ensembl_version(g.strip()) for g in gene_ids]).to_numpy()
        mapped = np.where(pd.isna(mapped), by_stable, mapped)
        keys = np.where(pd.isna(mapped), keys, mapped)
    return pd.Series(keys, index=pd.Index(gene_ids, name="gene_id"), name="key")


def restrict_gene_sets(collection: GeneSetCollection, universe, *, min_size: int = 10,
                       max_size: int = 500) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """Reduce every set to the measured keys and apply the size limits.

    Parameters
    ----------
    collection : GeneSetCollection
    universe : iterable of str
        Harmonised keys of the measured genes (the background).
    min_size, max_size : int
        Limits on the number of *measured* members.

    Returns
    -------
    sets : dict of str -> list of str
        Kept sets -> their measured keys, sorted.
    table : pandas.DataFrame
        One row per set of the file: gene_set, description, set_size (as in the
        file), n_measured, tested (bool).
    """
    universe = set(universe)
    kept, rows = {}, []
    for name, genes in collection.sets.items():
        members = sorted(set(normalise_ids(genes)) & universe)
        tested = min_size <= len(members) <= max_size
        rows.append((name, collection.descriptions.get(name, ""), len(genes), len(members), tested))
        if tested:
            kept[name] = members
    table = pd.DataFrame(rows, columns=["gene_set", "description", "set_size", "n_measured", "tested"])
    return kept, table


# ------------------------------------------------------------------------------------------ statistics
def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN stays NaN.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the m non-missing p-values
    sorted increasingly.
    """
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok], kind="mergesort")
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def over_representation(selected, universe, sets: dict[str, list[str]], *, correlation=None,
                        null_overlaps=None, min_exceedances: int = 10) -> pd.DataFrame:
    """Over-representation of selected keys in each set, with an optional correlation-aware null.

    Parameters
    ----------
    selected : iterable of str
        Selected keys (must lie in ``universe``; others are ignored).
    universe : iterable of str
        Background keys: the measured genes.
    sets : dict of str -> list of str
        Sets restricted to the universe (see :func:`restrict_gene_sets`).
    correlation : array-like of float, optional
        Per set (in the order of ``sets``), the mean correlation between the
        selection indicators of its genes. The overlap is then tested against
        a beta-binomial with that intra-set correlation (the binomial whose
        draws are exchangeably correlated: variance
        ``K pi (1 - pi) (1 + (K - 1) rho)``, the variance inflation factor of
        CAMERA, Wu and Smyth 2012). The mean inter-gene correlation of the
        expression is an upper bound on the correlation of the indicators of
        a dichotomised statistic, so using it is conservative.
    null_overlaps : (n_sets, B) array, optional
        Overlaps of each set with the query list of ``B`` sample-label
        permutations (the query rebuilt on permuted labels). ``p_value`` is
        the permutation p-value ``(1 + #null >= x) / (1 + B)`` when at least
        ``min_exceedances`` null overlaps reach the observed one; beyond that
        resolution it is the tail of the beta-binomial whose correlation is
        fitted to the permutation null's variance (moments).
    min_exceedances : int
        Null draws needed at or above the observed value to trust the
        empirical p-value.

    Returns
    -------
    pandas.DataFrame
        gene_set, n_measured, n_selected, n_overlap, expected_overlap,
        odds_ratio, p_value, q_value, overlap_genes (';'-joined, sorted),
        hypergeometric_p_value, inter_gene_correlation (the rho used; 0 for
        the plain hypergeometric), in the order of ``sets``.
        ``hypergeometric_p_value = P(X >= n_overlap)`` with X hypergeometric
        (universe N, set size K, n selected): genes independent. ``p_value``
        equals it without ``correlation``/``null_overlaps`` and is never
        smaller than it otherwise. The odds ratio is the sample odds ratio of
        the 2x2 table, with 0.5 added to each cell when a cell is zero
        (Haldane-Anscombe).
    """
    from scipy.stats import betabinom, hypergeom

    universe = set(universe)
    chosen = set(selected) & universe
    N, n = len(universe), len(chosen)
    names = list(sets)
    K = np.array([len(sets[s]) for s in names], dtype=float)
    overlaps = [sorted(set(sets[s]) & chosen) for s in names]
    x = np.array([len(o) for o in overlaps], dtype=float)
    hyper = np.clip(hypergeom.sf(x - 1, N, K, n), 0, 1) if names else np.array([])
    p = hyper.copy()
    rho = np.zeros(len(names))
    pi = n / N if N else 0.0
    if null_overlaps is not None and len(names):
        null = np.asarray(null_overlaps, dtype=float)
        # moment estimate of the intra-set correlation of the indicators under the permutation null
        binom_var = K * pi * (1 - pi)
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = ((null.var(axis=1) / binom_var) - 1) / np.maximum(K - 1, 1)
        rho = np.nan_to_num(np.clip(rho, 0.0, 0.999))
    elif correlation is not None and len(names):
        rho = np.nan_to_num(np.clip(np.asarray(correlation, dtype=float), 0.0, 0.999))
    if (null_overlaps is not None or correlation is not None) and len(names) and 0 < pi < 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            a = pi * (1 - rho) / np.where(rho > 0, rho, 1)
            b = (1 - pi) * (1 - rho) / np.where(rho > 0, rho, 1)
            bb = betabinom.sf(x - 1, K.astype(int), a, b)
        # rho = 0 is the hypergeometric itself; never more liberal than genes-independent
        p = np.where(rho > 0, np.maximum(np.nan_to_num(bb, nan=1.0), hyper), hyper)
        if null_overlaps is not None:
            exceed = (null >= x[:, None]).sum(axis=1)
            empirical = (1 + exceed) / (1 + null.shape[1])
            p = np.where(exceed >= min_exceedances, empirical, p)
    a_, b_, c_ = x, n - x, K - x
    d_ = N - K - n + x
    zero = (a_ == 0) | (b_ == 0) | (c_ == 0) | (d_ == 0)
    adj = np.where(zero, 0.5, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = ((a_ + adj) * (d_ + adj)) / ((b_ + adj) * (c_ + adj))
    p = np.clip(p, 0, 1)
    return pd.DataFrame({
        "gene_set": names, "n_measured": K.astype(int), "n_selected": n, "n_overlap": x.astype(int),
        "expected_overlap": K * n / N if N else np.nan, "odds_ratio": odds, "p_value": p,
        "q_value": benjamini_hochberg(p), "overlap_genes": [";".join(o) for o in overlaps],
        "hypergeometric_p_value": hyper, "inter_gene_correlation": rho,
    })


def collapse_scores(scores: pd.Series, keys: pd.Series) -> pd.Series:
    """One score per key: the score with the largest absolute value among its ids.

    Ties are broken by the id that sorts first, so the result is deterministic.
    """
    frame = pd.DataFrame({"key": keys.reindex(scores.index).to_numpy(), "score": scores.to_numpy(),
                          "abs": np.abs(scores.to_numpy()), "id": scores.index.astype(str)})
    frame = frame.dropna(subset=["key", "score"]).sort_values(["key", "abs", "id"], ascending=[True, False, True],
                                                              kind="mergesort")
    first = frame.drop_duplicates("key", keep="first")
    return pd.Series(first["score"].to_numpy(), index=pd.Index(first["key"].to_numpy(), name="key"), name="score")


def _running_sum_extremes(pos: np.ndarray, weights: np.ndarray, n_genes: int):
    """Enrichment scores of many sets of the same size from their hit positions.

    The GSEA running sum steps up by w_i / sum(w) at each hit and down by
    1 / (N - k) at each miss, so its extremes sit right after a hit (maximum)
    or right before one (minimum); both follow from the sorted hit positions
    in O(k) instead of O(N). Rows whose hits all weigh zero get ES = 0.

    Parameters
    ----------
    pos : (m, k) int array
        0-based positions of the hits in the ranking, sorted along axis 1.
    weights : (m, k) float array
        |score|^p of each hit.
    n_genes : int

    Returns
    -------
    es : (m,) float, imax : (m,) int, imin : (m,) int
        Signed ES (the larger deviation in absolute value), and the hit index
        of the maximum and of the minimum.
    """
    m, k = pos.shape
    total = weights.sum(axis=1, keepdims=True)
    zero = total[:, 0] <= 0
    total[zero] = 1.0
    cum = np.cumsum(weights, axis=1) / total
    misses = (pos - np.arange(k)) / max(n_genes - k, 1)
    up = cum - misses
    down = cum - weights / total - misses
    imax = up.argmax(axis=1)
    imin = down.argmin(axis=1)
    rows = np.arange(m)
    es_max = up[rows, imax]
    es_min = np.minimum(down[rows, imin], 0.0)
    es = np.where(np.abs(es_max) >= np.abs(es_min), es_max, es_min)
    es[zero] = 0.0
    return es, imax, imin


def tail_p_values(observed, null, *, min_exceedances: int = 10) -> np.ndarray:
    """Permutation p-values of signed enrichment scores, with a fitted tail beyond their resolution.

    The p-value of a score e >= 0 is taken among the null scores >= 0, that
    of e < 0 among the null scores < 0 (GSEA's sign-conditional p-value).
    When at least ``min_exceedances`` null scores are as extreme as e the
    empirical value ``(1 + #as extreme) / (1 + #same sign)`` is used; beyond
    that the permutation p-value is mostly resolution (its floor is
    1 / (1 + B)), so the tail of a gamma distribution fitted to the
    same-sign |null| (method of moments) is used instead, as blitzgsea
    does for every set, capped at the empirical value (a valid p-value by
    itself; ES is bounded by 1, so the gamma tail overstates its far tail).
    This is what gives BH over thousands of sets usable p-values without
    10^5 permutations.

    Parameters
    ----------
    observed : (m,) array
    null : (m, B) or (B,) array
        Null scores per row (or one null shared by every row).
    min_exceedances : int

    Returns
    -------
    (m,) array of p-values; NaN where ``observed`` is NaN or the null has no
    score of that sign.
    """
    from scipy.stats import gamma

    e = np.asarray(observed, dtype=float)
    null = np.asarray(null, dtype=float)
    if null.ndim == 1:
        null = np.broadcast_to(null, (len(e), len(null)))
    out = np.full(len(e), np.nan)
    for sign in (1.0, -1.0):
        rows = (e >= 0) if sign > 0 else (e < 0)
        if not rows.any():
            continue
        x = sign * null[rows]
        mask = (x >= 0) if sign > 0 else (x > 0)
        target = sign * e[rows]
        n_same = mask.sum(axis=1)
        exceed = (mask & (x >= target[:, None])).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            empirical = (1 + exceed) / (1 + n_same)
            mean = np.where(mask, x, 0).sum(axis=1) / n_same
            var = np.where(mask, (x - mean[:, None]) ** 2, 0).sum(axis=1) / np.maximum(n_same - 1, 1)
            shape, scale = mean ** 2 / var, var / mean
            fitted = gamma.sf(target, shape, scale=scale)
        ok_fit = np.isfinite(fitted) & (var > 0) & (mean > 0) & (n_same >= 20)
        # below the resolution the fitted tail, but never above the permutation p-value, which is valid by
        # itself: a bounded ES (it cannot pass 1) has a lighter tail than the gamma, which is conservative there
        p = np.where((exceed >= min_exceedances) | ~ok_fit, empirical, np.minimum(fitted, empirical))
        p = np.where(n_same > 0, p, np.nan)
        out[rows] = np.clip(p, 0, 1)
    return out


def inter_gene_correlation(residuals: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """Mean pairwise correlation of the genes of each set (CAMERA's estimate).

    With each column of the residual matrix scaled to unit mean square,
    the variance inflation factor of a set of m genes is
    ``VIF = m * mean over samples of (mean over the set's genes)^2``
    and the mean correlation ``(VIF - 1) / (m - 1)`` (limma's
    ``interGeneCorrelation``, Wu and Smyth 2012), in O(n m) per set.

    Parameters
    ----------
    residuals : (n_samples, n_genes) array
        Expression with the outcome's effect removed (class means for
        classes, the regression on the outcome for a continuous one), so
        a true effect does not pass for correlation.
    members : list of int arrays
        Column indices of each set.

    Returns
    -------
    (n_sets,) array of mean correlations (NaN for sets with fewer than two
    genes). Constant genes count as uncorrelated.
    """
    R = np.asarray(residuals, dtype=float)
    scale = np.sqrt((R ** 2).mean(axis=0))
    Z = np.divide(R, scale, out=np.zeros_like(R), where=scale > 0)
    out = np.full(len(members), np.nan)
    for i, idx in enumerate(members):
        m = len(idx)
        if m < 2:
            continue
        mean = Z[:, idx].mean(axis=1)
        vif = m * float(np.mean(mean ** 2))
        out[i] = (vif - 1) / (m - 1)
    return out


def distinct_permutations(labels) -> float:
    """Number of distinct outcome vectors that permuting the samples can give.

    ``n! / prod(count of each distinct value)!``: the multinomial coefficient
    for classes, n! (divided for ties) for a continuous outcome. Returned as
    a float (``inf`` beyond 1e300).
    """
    from math import exp, lgamma

    values = pd.Series(np.asarray(labels)).astype(str)
    counts = values.value_counts().to_numpy()
    log_n = lgamma(len(values) + 1) - sum(lgamma(c + 1) for c in counts)
    return float("inf") if log_n > 690 else float(round(exp(log_n)))


def collapse_matrix(values: np.ndarray, ids, keys: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """:func:`collapse_scores` applied to every row of a (B, n_ids) matrix at once.

    Returns the (B, n_keys) matrix and the keys in sorted order (the index
    :func:`collapse_scores` returns); ties in |value| go to the id that sorts first.
    """
    values = np.asarray(values, dtype=float)
    frame = pd.DataFrame({"key": keys.reindex([str(i) for i in ids]).to_numpy(), "id": [str(i) for i in ids],
                          "col": np.arange(len(ids))}).dropna(subset=["key"])
    frame = frame.sort_values(["key", "id"], kind="mergesort")
    uniq, start, counts = np.unique(frame["key"].to_numpy().astype(str), return_index=True, return_counts=True)
    cols = frame["col"].to_numpy()
    if counts.max(initial=1) == 1:
        return values[:, cols], pd.Index(uniq, name="key")
    width = int(counts.max())
    # pad every key's ids to the same width with a column of -inf |value|
    grid = np.full((len(uniq), width), -1, dtype=np.int64)
    for j in range(width):
        has = counts > j
        grid[has, j] = cols[start[has] + j]
    padded = np.concatenate([values, np.full((values.shape[0], 1), np.nan)], axis=1)
    cand = padded[:, grid]  # (B, n_keys, width); -1 picks the NaN pad column
    absval = np.where(np.isnan(cand), -np.inf, np.abs(cand))
    pick = absval.argmax(axis=2)  # first maximum: the id that sorts first
    out = np.take_along_axis(cand, pick[..., None], axis=2)[..., 0]
    return out, pd.Index(uniq, name="key")


def _ranks(scores: np.ndarray, tie_order: np.ndarray) -> np.ndarray:
    """0-based position of every gene in each row's ranking (descending score,
    ties in ``tie_order``), shape like ``scores``."""
    B, n = scores.shape
    base = scores[:, tie_order]
    order = np.argsort(-base, axis=1, kind="stable")
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(n), (B, n)), axis=1)
    out = np.empty_like(pos)
    out[:, tie_order] = pos
    return out


def camera_rank_test(scores, members: list[np.ndarray], vif) -> np.ndarray:
    """Competitive test of each set's mean normal score, its variance inflated by the VIF (CAMERA).

    The scores are turned into normal scores of their ranks (van der Waerden:
    ``Phi^-1(rank / (N + 1))``, ties averaged), which makes the test rank-based
    and robust to heavy-tailed scores such as mean |SHAP|. For a set of k
    genes, ``T = (mean_set - mean_rest) / (s sqrt(VIF / k + 1 / (N - k)))``
    with s the standard deviation of all N normal scores, VIF = 1 + (k - 1) rho,
    and the two-sided p-value from t with N - 2 degrees of freedom
    (camera in limma, Wu and Smyth 2012).

    Parameters
    ----------
    scores : (N,) array
    members : list of int arrays
        Indices of each set's genes in ``scores``.
    vif : (n_sets,) array
        Variance inflation factor per set (values below 1 are taken as 1).

    Returns
    -------
    (n_sets,) array of two-sided p-values (NaN for empty sets or sets of all genes).
    """
    from scipy import special
    from scipy.stats import norm, rankdata

    x = np.asarray(scores, dtype=float)
    N = len(x)
    z = norm.ppf(rankdata(x) / (N + 1))
    s = z.std(ddof=1) if N > 1 else np.nan
    total = z.sum()
    vif = np.maximum(np.nan_to_num(np.asarray(vif, dtype=float), nan=1.0), 1.0)
    out = np.full(len(members), np.nan)
    for i, idx in enumerate(members):
        k = len(idx)
        if k == 0 or k >= N:
            continue
        diff = z[idx].mean() - (total - z[idx].sum()) / (N - k)
        t = diff / (s * np.sqrt(vif[i] / k + 1 / (N - k)))
        out[i] = 2 * special.stdtr(N - 2, -abs(t))
    return out


def prerank(scores: pd.Series, sets: dict[str, list[str]], *, n_permutations: int = 1000, weight: float = 1.0,
            random_state=0, batch_rows: int = 2_000_000, vif=None, null_scores: np.ndarray | None = None,
            min_exceedances: int = 10) -> pd.DataFrame:
    """Pre-ranked gene-set enrichment (GSEA-style) with a choice of null.

    The enrichment score (ES) of a set is the maximum deviation from zero of
    the weighted Kolmogorov-Smirnov running sum down the ranking (Subramanian
    et al. 2005, weight p = ``weight``).

    Three nulls:

    * gene permutation (default): ``n_permutations`` random k-subsets of the
      ranking; sets of the same size share one null sample (as in fgsea).
      Valid only when the genes of a set are independent.
    * correlation-adjusted (``vif``): ``p_value`` is CAMERA's competitive test
      (Wu and Smyth 2012) on the normal scores of the ranking, see
      :func:`camera_rank_test`; ES and NES stay those of the gene-permutation
      null (descriptive). Deflating ES itself cannot work: ES is bounded by 1,
      so under strong correlation no deflated ES would ever be significant.
    * sample-label permutation (``null_scores``): the gene scores recomputed
      on ``B`` permutations of the sample labels (GSEA's phenotype
      permutation); each set gets its own null ES from the rankings of those
      scores, which keeps the correlation between genes.

    NES = ES / mean of the null ES of the same sign; for the permutation nulls
    ``p_value`` comes from :func:`tail_p_values` (sign-conditional, empirical
    where the null resolves it, a fitted gamma tail beyond); ``q_value`` is
    Benjamini-Hochberg over the tested sets of ``p_value`` (not GSEA's FDR,
    which compares NES with the NES of all sets under permutation).

    Parameters
    ----------
    scores : pandas.Series
        Score per key (higher = earlier in the ranking). Use
        :func:`collapse_scores` first when ids map to shared keys.
    sets : dict of str -> list of str
        Sets restricted to the keys of ``scores``.
    n_permutations : int
        Gene permutations (always run: ``gene_permutation_p_value``).
    weight : float
        Exponent p of |score| in the running sum (1 = classic GSEA).
    random_state : int or numpy.random.Generator or SeedSequence
    batch_rows : int
        Upper bound on positions handled per vectorised step (memory knob).
    vif : array-like, optional
        Variance inflation factor per set (order of ``sets``); values below 1
        are taken as 1.
    null_scores : (B, n_genes) array, optional
        Scores of the genes of ``scores`` (same order) under B label permutations.
    min_exceedances : int
        See :func:`tail_p_values`.

    Returns
    -------
    pandas.DataFrame
        gene_set, n_measured, es, nes, p_value, q_value, leading_edge
        (';'-joined keys in ranking order), n_leading_edge,
        gene_permutation_p_value (genes-independent null, for comparison);
        in the order of ``sets``.
    """
    rng = np.random.default_rng(random_state)
    score_values = scores.to_numpy(dtype=float)
    key_str = scores.index.astype(str).to_numpy()
    order = np.lexsort((key_str, -score_values))
    ranked_keys = scores.index.to_numpy()[order]
    w_all = np.abs(score_values[order]) ** weight
    n_genes = len(ranked_keys)
    position = pd.Series(np.arange(n_genes), index=ranked_keys)
    gene_index = pd.Series(np.arange(n_genes), index=scores.index)
    names = list(sets)
    member_pos = [np.sort(position.reindex(sets[s]).dropna().to_numpy(dtype=np.int64)) for s in names]
    member_idx = [gene_index.reindex(sets[s]).dropna().to_numpy(dtype=np.int64) for s in names]
    sizes = np.array([len(p) for p in member_pos])
    es_all = np.full(len(names), np.nan)
    gp_p = np.full(len(names), np.nan)
    gp_nes = np.full(len(names), np.nan)
    leading = [""] * len(names)
    n_lead = np.zeros(len(names), dtype=int)
    testable = (sizes > 0) & (sizes < n_genes)
    max_k = int(sizes[testable].max()) if testable.any() else 0
    if max_k:
        # one random max_k-subset (in random order) per permutation; its first k
        # entries are a uniform random k-subset, for every k at once
        perms = np.empty((n_permutations, max_k), dtype=np.int64)
        for i in range(n_permutations):
            perms[i] = rng.choice(n_genes, size=max_k, replace=False, shuffle=True)
    for k in np.unique(sizes[testable]):
        idx = np.flatnonzero(sizes == k)
        obs_pos = np.stack([member_pos[i] for i in idx])
        es, imax, imin = _running_sum_extremes(obs_pos, w_all[obs_pos], n_genes)
        null = np.empty(n_permutations)
        step = max(1, batch_rows // int(k))
        for start in range(0, n_permutations, step):
            block = np.sort(perms[start:start + step, :k], axis=1)
            null[start:start + step] = _running_sum_extremes(block, w_all[block], n_genes)[0]
        pos_null, neg_null = null[null >= 0], null[null < 0]
        mean_pos = pos_null.mean() if pos_null.size else np.nan
        mean_neg = -neg_null.mean() if neg_null.size else np.nan
        norm = np.where(es >= 0, mean_pos, mean_neg)
        with np.errstate(divide="ignore", invalid="ignore"):
            gp_nes[idx] = np.where(norm > 0, es / norm, np.nan)
        gp_p[idx] = tail_p_values(es, null, min_exceedances=min_exceedances)
        for j, i in enumerate(idx):
            e = es[j]
            hits = obs_pos[j, :imax[j] + 1] if e >= 0 else obs_pos[j, imin[j]:]
            es_all[i] = e
            if e == 0:
                hits = hits[:0]
            leading[i] = ";".join(ranked_keys[hits])
            n_lead[i] = len(hits)
    if null_scores is not None:
        p_value, nes = np.full(len(names), np.nan), np.full(len(names), np.nan)
        null_s = np.asarray(null_scores, dtype=float)
        if null_s.ndim != 2 or null_s.shape[1] != n_genes:
            raise ValueError(f"null_scores must have shape (B, {n_genes}), got {null_s.shape}")
        tie_order = np.argsort(key_str, kind="stable")
        B = null_s.shape[0]
        null_es = np.full((len(names), B), np.nan)
        # every permutation's ranking first (B x genes positions), then sets of one size at a time over as
        # many permutations as fit in batch_rows: few, large vectorised steps
        R = np.empty((B, n_genes), dtype=np.int32)
        for b0 in range(0, B, 100):
            R[b0:b0 + 100] = _ranks(null_s[b0:b0 + 100], tie_order)
        for k in np.unique(sizes[testable]):
            idx = np.flatnonzero(sizes == k)
            M = np.stack([member_idx[i] for i in idx])  # (m_k, k) gene indices
            rows_per = max(1, batch_rows // (len(idx) * int(k)))
            for b0 in range(0, B, rows_per):
                P = R[b0:b0 + rows_per][:, M]
                W = np.abs(null_s[b0:b0 + rows_per][:, M]) ** weight
                o = np.argsort(P, axis=2)
                P = np.take_along_axis(P, o, axis=2).reshape(-1, k)
                W = np.take_along_axis(W, o, axis=2).reshape(-1, k)
                e_null = _running_sum_extremes(P, W, n_genes)[0].reshape(-1, len(idx))
                null_es[idx, b0:b0 + len(e_null)] = e_null.T
        p_value[testable] = tail_p_values(es_all[testable], null_es[testable], min_exceedances=min_exceedances)
        with np.errstate(divide="ignore", invalid="ignore"):
            # mean of the same-sign null ES per set (NaN when the null has no ES of that sign)
            pos_mask, neg_mask = null_es >= 0, null_es < 0
            pos_mean = np.where(pos_mask, null_es, 0).sum(axis=1) / pos_mask.sum(axis=1)
            neg_mean = -np.where(neg_mask, null_es, 0).sum(axis=1) / neg_mask.sum(axis=1)
        norm = np.where(es_all >= 0, pos_mean, neg_mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            nes = np.where(norm > 0, es_all / norm, np.nan)
    elif vif is not None:
        p_value, nes = camera_rank_test(score_values, member_idx, vif), gp_nes
    else:
        p_value, nes = gp_p, gp_nes
    return pd.DataFrame({"gene_set": names, "n_measured": sizes, "es": es_all, "nes": nes,
                         "p_value": p_value, "q_value": benjamini_hochberg(p_value),
                         "leading_edge": leading, "n_leading_edge": n_lead, "gene_permutation_p_value": gp_p})


def group_attributions(attributions: pd.DataFrame, keys: pd.Series, sets: dict[str, list[str]],
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sum and mean of |SHAP| over the member genes of each set.

    Parameters
    ----------
    attributions : pandas.DataFrame
        Rows = samples (index = sample id; repeated ids, e.g. one row per class
        of a multiclass model, are averaged in absolute value), columns =
        measured gene ids, values = SHAP values.
    keys : pandas.Series
        Measured id -> key (see :func:`map_gene_ids`).
    sets : dict of str -> list of str
        Sets over keys.

    Returns
    -------
    overall : pandas.DataFrame
        gene_set, n_attributed_genes (measured ids with an attribution),
        sum_abs_shap (mean over samples of the per-sample sum), mean_abs_shap
        (that divided by n_attributed_genes), rank (by sum_abs_shap, ties by
        name); sorted by rank.
    per_sample : pandas.DataFrame
        Samples x sets, per-sample sum of |SHAP| over the set's genes.
    """
    abs_attr = attributions.abs().groupby(level=0, sort=False).mean()
    cols = [c for c in abs_attr.columns if c in keys.index]
    col_keys = keys.reindex(cols).to_numpy()
    names = list(sets)
    key_to_set = {}
    for j, name in enumerate(names):
        for k in sets[name]:
            key_to_set.setdefault(k, []).append(j)
    rows, cols_idx = [], []
    for c, k in enumerate(col_keys):
        for j in key_to_set.get(k, ()):
            rows.append(c)
            cols_idx.append(j)
    from scipy import sparse

    membership = sparse.csr_matrix((np.ones(len(rows)), (rows, cols_idx)), shape=(len(cols), len(names)))
    values = abs_attr[cols].to_numpy(dtype=float)
    per = np.asarray(membership.T.dot(values.T).T) if len(names) else np.zeros((len(values), 0))
    n_attr = np.asarray(membership.sum(axis=0)).ravel().astype(int)
    total = per.mean(axis=0) if len(values) else np.zeros(len(names))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n_attr > 0, total / np.maximum(n_attr, 1), np.nan)
    overall = pd.DataFrame({"gene_set": names, "n_attributed_genes": n_attr, "sum_abs_shap": total,
                            "mean_abs_shap": mean})
    overall = overall.sort_values(["sum_abs_shap", "gene_set"], ascending=[False, True], kind="mergesort")
    overall.insert(0, "rank", np.arange(1, len(overall) + 1))
    per_sample = pd.DataFrame(per, index=abs_attr.index, columns=names)
    return overall.reset_index(drop=True), per_sample


def set_membership(sets: dict[str, list[str]], significant: list[str]) -> dict[str, list[str]]:
    """Key -> sorted names of the ``significant`` sets that contain it."""
    out: dict[str, list[str]] = {}
    for name in sorted(significant):
        for key in sets.get(name, ()):
            out.setdefault(key, []).append(name)
    return out


