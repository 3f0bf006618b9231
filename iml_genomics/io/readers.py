"""Readers for expression matrices and label tables.

Every reader returns data keyed by identifiers (sample ids, gene ids) so
that samples are matched by id, never by position. Problems raise
:class:`~iml_genomics.errors.InputDataError` with a one-line message naming
the file, the row/column and what to do.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import unicodedata
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from iml_genomics.errors import InputDataError
from iml_genomics.io.ids import show_id

MATRIX_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz", ".parquet", ".pq", ".h5ad")


LABEL_NA_TOKENS = ("", "NA", "NaN", "nan", "N/A", "n/a", "#N/A", "NULL", "null")

_TRUE_STRINGS = {"true", "1", "yes", "y", "t", "1.0"}


def truthy(column: pd.Series) -> pd.Series:
    """Boolean view of a flag column read back from a TSV (``True``/``1``/``yes``..., any case)."""
    if column.dtype == bool:
        return column
    return column.astype(str).str.strip().str.lower().isin(_TRUE_STRINGS)


def tested_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a ``knockoff_selection.tsv`` for genes that were tested (all rows of older tables)."""
    return table[truthy(table["tested"]).to_numpy()] if "tested" in table.columns else table


def detect_format(path: Path) -> str:
    """Return 'csv', 'tsv', 'parquet' or 'h5ad' from the file name."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in (".csv",):
        return "csv"
    if suffix in (".tsv", ".txt"):
        return "tsv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".h5ad":
        return "h5ad"
    raise InputDataError(
        f"{path}: unknown file format '{path.suffix or path.name}'. Use one of "
        f"{', '.join(MATRIX_SUFFIXES)} (CSV/TSV may be gzipped).")


def check_readable(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path, or raise if it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: {what} file not found. Check the path.")
    if path.is_dir():
        raise InputDataError(f"{path}: {what} path is a directory, not a file. Give the path of the file itself.")
    if not path.is_file():
        raise InputDataError(f"{path}: {what} path is not a regular file. Give the path of a {what} file.")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InputDataError(f"{path}: cannot read {what} file ({exc.strerror}). Check the file's permissions "
                             f"(for example chmod u+r).") from None
    if not path.name.lower().endswith((".parquet", ".pq", ".h5ad", ".h5", ".json")):
        _check_first_line(path, what)
    return path


# A header line of 10^5 sample ids is ~2 MB; a first "line" longer than this is not a table
# (a sparse file of NUL bytes, say), and the CSV parser would hold all of it in memory.
_MAX_FIRST_LINE = 64 * 2**20


def _check_first_line(path: Path, what: str) -> None:
    """Refuse a text table whose first line does not end within :data:`_MAX_FIRST_LINE` bytes."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            seen = 0
            while seen <= _MAX_FIRST_LINE:
                block = fh.read(1 << 20)
                if not block or b"\n" in block or b"\r" in block:
                    return
                seen += len(block)
    except (OSError, EOFError, zlib.error):
        return  # the reader itself reports an unreadable or corrupt file in its own words
    raise InputDataError(f"{path}: the first line of this {what} file is longer than {_MAX_FIRST_LINE} bytes; "
                         f"it is not a table. Check the path.")


def open_text(path: Path):
    # utf-8-sig: a byte-order mark (Excel, some Windows tools) is not part of the first id
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _first_duplicate(ids) -> str | None:
    seen = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    return None


def _read_text_matrix(path: Path, sep: str) -> pd.DataFrame:
    # pandas silently renames duplicate header names ('g1' -> 'g1.1'), so the
    # header is read with the csv module first to see the ids as written.
    try:
        with open_text(path) as fh:
            header = next(csv.reader(fh, delimiter=sep), None)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as exc:
        # gzip.BadGzipFile is an OSError; a corrupt deflate stream raises zlib.error
        raise InputDataError(f"{path}: cannot read matrix ({show_id(exc)}). Is the file complete and in the "
                             f"format its name says?") from None
    if not header or len(header) < 2:
        raise InputDataError(f"{path}: empty matrix (no header with identifiers). Check the file and its delimiter "
                             f"({'comma' if sep == ',' else 'tab'} expected for this extension).")
    try:
        frame = pd.read_csv(path, sep=sep, index_col=0, header=0, dtype=str, keep_default_na=False,
                            na_filter=False, engine="c", encoding="utf-8-sig")
    except EOFError:  # a truncated .gz (click would otherwise print a bare 'Aborted!')
        raise InputDataError(f"{path}: the compressed file ends early (truncated download or copy?). "
                             f"Re-create or re-download it.") from None
    except (pd.errors.ParserError, ValueError, OSError, UnicodeDecodeError, zlib.error) as exc:
        msg = show_id((str(exc).strip().splitlines() or ["unreadable"])[-1])
        raise InputDataError(f"{path}: cannot parse matrix ({msg}). Check the delimiter and that every row has the same number of fields.") from None
    # R's write.table omits the corner cell, so the header may be one field short.
    col_ids = [c.strip() for c in (header[1:] if len(header) - 1 == frame.shape[1] else header)]
    frame.index = frame.index.astype(str).str.strip()
    frame.attrs["column_header"] = col_ids
    return frame


def _to_numeric(frame: pd.DataFrame, path: Path, row_kind: str, col_kind: str) -> np.ndarray:
    """Convert string cells to float64, naming the first non-numeric cell."""
    values = frame.to_numpy(dtype=object)
    # Empty strings and the usual NA spellings become NaN so they are counted
    # as missing values (with location) rather than as unparsable text.
    na_tokens = {"", "NA", "NaN", "nan", "N/A", "NULL", "null"}
    flat = values.ravel()
    out = np.empty(flat.shape, dtype=np.float64)
    try:
        out[:] = pd.to_numeric(pd.Series(flat).replace(list(na_tokens), np.nan), errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        parsed = pd.to_numeric(pd.Series(flat).replace(list(na_tokens), np.nan), errors="coerce").to_numpy()
        bad = np.flatnonzero(np.isnan(parsed) & ~pd.Series(flat).isin(na_tokens).to_numpy())
        r, c = np.unravel_index(bad[0], values.shape)
        raise InputDataError(
            f"{path}: non-numeric value '{show_id(values[r, c])}' at {row_kind} '{show_id(frame.index[r])}', "
            f"{col_kind} '{show_id(frame.columns[c])}' ({bad.size} such cells). Expression values must be numbers.") from None
    return out.reshape(values.shape)


def read_expression(path: str | Path, *, genes_as_rows: bool = False, layer: str | None = None):
    """Read an expression matrix as samples x genes.

    Parameters
    ----------
    path : str or Path
        CSV/TSV (optionally gzipped), Parquet or AnnData ``.h5ad``.
    genes_as_rows : bool
        The file has genes as rows and samples as columns (GEO/TCGA layout).
    layer : str, optional
        For ``.h5ad``: read this layer instead of ``X``.

    Returns
    -------
    X : numpy.ndarray or scipy.sparse.csr_matrix
        float64 values, samples x genes.
    sample_ids, gene_ids : list of str
    obs : pandas.DataFrame or None
        Sample metadata from an ``.h5ad`` file (for labels taken from obs).
    """
    path = check_readable(path, "expression")
    fmt = detect_format(path)
    obs = None
    row_kind, col_kind = ("gene", "sample") if genes_as_rows else ("sample", "gene")
    if fmt in ("csv", "tsv"):
        frame = _read_text_matrix(path, "," if fmt == "csv" else "\t")
        col_ids = frame.attrs["column_header"]
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise InputDataError(f"{path}: empty matrix ({frame.shape[0]} rows x {frame.shape[1]} columns). "
                                 f"The file needs a header of {col_kind} ids and one row per {row_kind}.")
        check_unique(col_ids, path, col_kind)
        check_unique(list(frame.index), path, row_kind)
        frame.columns = col_ids
        X = _to_numeric(frame, path, row_kind, col_kind)
        row_ids, col_ids = list(frame.index), list(col_ids)
    elif fmt == "parquet":
        X, row_ids, col_ids = _read_parquet(path, row_kind, col_kind)
    else:
        X, row_ids, col_ids, obs = _read_h5ad(path, layer)
        row_kind, col_kind = "sample", "gene"
        if genes_as_rows:
            raise InputDataError(f"{path}: --genes-as-rows does not apply to .h5ad files (AnnData is always "
                                 f"observations x variables). Drop the option or set orientation: samples_x_genes.")
    if genes_as_rows:
        X = X.T.copy()
        row_ids, col_ids = col_ids, row_ids
    sample_ids, gene_ids = [str(s) for s in row_ids], [str(g) for g in col_ids]
    check_ids(sample_ids, path, "sample")
    check_ids(gene_ids, path, "gene")
    check_values(X, path, sample_ids, gene_ids)
    return X, sample_ids, gene_ids, obs


def check_unique(ids: list, path, kind: str, fix: str | None = None) -> None:
    """Refuse duplicated identifiers, naming the first and how many there are.

    Parameters
    ----------
    ids : list of str
    path : path or str
        The file (or ``adata.var_names``) named first in the message.
    kind : {"gene", "sample"}
    fix : str, optional
        What to do; default: aggregate or rename them.

    Raises
    ------
    InputDataError
    """
    dup = _first_duplicate(ids)
    if dup is not None:
        n = len(ids) - len(set(ids))
        raise InputDataError(f"{path}: duplicate {kind} id '{show_id(dup)}' ({n} duplicated {kind} ids). "
                             f"{kind.capitalize()} ids must be unique: {fix or 'aggregate or rename them'}.")


def _is_breaking(ch: str) -> bool:
    # control characters (tab, newline, NUL, ESC, ...) and the Unicode line/paragraph
    # separators: any of them inside an id splits or shifts the rows of every TSV we write
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def check_ids(ids: list[str], path, kind: str) -> None:
    """Refuse empty identifiers and identifiers holding a tab, newline or other control character.

    Such an id cannot be written to a TSV (``cut``/``awk``/pandas would see
    extra columns or rows), so it is refused where it is read, naming the
    first offender (escaped and shortened) and its position.

    Parameters
    ----------
    ids : list of str
        Identifiers as read (after stripping surrounding whitespace).
    path : str or Path
        File they came from, for the message.
    kind : str
        'gene' or 'sample'.
    """
    for i, ident in enumerate(ids):
        if not ident.strip():
            raise InputDataError(f"{path}: empty {kind} id at {kind} position {i + 1} (1-based). Every {kind} "
                                 f"needs a non-empty identifier: fill it in or remove that {kind}.")
        bad = next((c for c in ident if _is_breaking(c)), None)
        if bad is not None:
            name = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}.get(bad,
                                                                                       "a control character")
            raise InputDataError(f"{path}: {kind} id '{show_id(ident)}' (position {i + 1}) contains {name} "
                                 f"({repr(bad)[1:-1]}), which breaks every tab-separated output. Rename it "
                                 f"without tabs, newlines or control characters.")


def _read_parquet(path: Path, row_kind: str, col_kind: str):
    import pyarrow.parquet as pq

    try:
        # ParquetFile.read, unlike read_table, accepts duplicate column names, so
        # duplicate gene ids reach the check below instead of a pyarrow error.
        table = pq.ParquetFile(path).read()
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise InputDataError(f"{path}: cannot read Parquet file ({show_id((str(exc).splitlines() or [type(exc).__name__])[0])}). "
                             f"Is the file complete and written as Parquet?") from None
    names = list(table.column_names)
    try:
        meta = table.schema.pandas_metadata or {}
    except ValueError as exc:  # the 'pandas' schema metadata is JSON that another tool may have garbled
        raise InputDataError(f"{path}: the Parquet file's 'pandas' metadata is not valid JSON ({show_id(exc)}). "
                             f"Rewrite the file (for example with pandas.DataFrame.to_parquet).") from None
    index_entries = meta.get("index_columns", []) if isinstance(meta, dict) else []
    index_cols = [c for c in (index_entries if isinstance(index_entries, list) else []) if isinstance(c, str)]
    if index_cols and index_cols[0] not in names:
        raise InputDataError(f"{path}: the Parquet file's 'pandas' metadata names index column "
                             f"'{show_id(index_cols[0])}', which the file does not hold. Rewrite the file (for "
                             f"example with pandas.DataFrame.to_parquet).")
    if index_cols:
        id_col = index_cols[0]
    elif names:
        id_col = names[0]
    else:
        raise InputDataError(f"{path}: empty matrix (no columns).")
    value_cols = [c for c in names if c != id_col]
    if table.num_rows == 0 or not value_cols:
        raise InputDataError(f"{path}: empty matrix ({table.num_rows} rows x {len(value_cols)} value columns).")
    check_unique(value_cols, path, col_kind)
    row_ids = [str(v) for v in table.column(id_col).to_pylist()]
    check_unique(row_ids, path, row_kind)
    X = np.empty((table.num_rows, len(value_cols)), dtype=np.float64)
    import pyarrow.types as pat

    for j, name in enumerate(value_cols):
        col = table.column(name)
        if pat.is_integer(col.type) or pat.is_floating(col.type) or pat.is_null(col.type):
            X[:, j] = col.to_numpy(zero_copy_only=False)
        elif pat.is_decimal(col.type):
            X[:, j] = np.array([np.nan if v is None else float(v) for v in col.to_pylist()], dtype=np.float64)
        elif not (pat.is_string(col.type) or pat.is_large_string(col.type) or pat.is_dictionary(col.type)):
            # booleans, timestamps, dates, binary, nested: pandas would turn True into 1 and a
            # date into nanoseconds since 1970 and train on it; a sample sheet column is not a gene
            raise InputDataError(f"{path}: column '{show_id(name)}' has type {show_id(col.type)}, not numbers "
                                 f"(is it a sample annotation rather than a {col_kind}?). Expression values must "
                                 f"be numbers: drop or convert that column.")
        else:
            parsed = pd.to_numeric(pd.Series(col.to_pylist()), errors="coerce").to_numpy(dtype=float)
            raw = col.to_pylist()
            bad = [i for i, (p, r) in enumerate(zip(parsed, raw)) if np.isnan(p) and r not in (None, "")]
            if bad:
                raise InputDataError(f"{path}: non-numeric value '{show_id(raw[bad[0]])}' at {row_kind} "
                                     f"'{show_id(row_ids[bad[0]])}', {col_kind} '{show_id(name)}' (column type "
                                     f"{col.type}). Expression values must be numbers.")
            X[:, j] = parsed
    return X, row_ids, value_cols


@contextlib.contextmanager
def _quiet_duplicate_names():
    """Silence anndata's duplicate-name warning: we raise a clearer one-line error right after."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(Variable|Observation) names are not unique")
        yield


def _h5ad_index_length(group) -> int | None:
    """Rows of an AnnData ``obs``/``var`` as stored (the index dataset's length), or None if unknown."""
    import h5py

    if isinstance(group, h5py.Dataset):  # the old layout: one compound dataset
        return len(group)
    if isinstance(group, h5py.Group):
        name = group.attrs.get("_index")
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        if isinstance(name, str) and isinstance(group.get(name), h5py.Dataset):
            return len(group[name])
    return None


def _h5ad_matrix_problem(path: Path, layer: str | None) -> str | None:
    """What is inconsistent in the stored shape of X (or ``layer``), read from metadata only.

    anndata reads the whole matrix before it compares its shape with obs and
    var, and scipy trusts a sparse matrix's index arrays: a file of a few KiB
    can declare a 20 GiB dense X (HDF5 does not store unwritten chunks), an
    ``indptr`` past the end of ``data``, or a ``data`` array far longer than
    ``indices``. These are refused from the HDF5 metadata before anything
    large is read. None when consistent or not judged here (anndata then speaks).
    """
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            n_obs, n_var = _h5ad_index_length(fh.get("obs")), _h5ad_index_length(fh.get("var"))
            where = "X" if layer is None else f"layer '{show_id(layer)}'"
            node = fh.get("X") if layer is None else (fh.get("layers") or {}).get(layer)
            if node is None or n_obs is None or n_var is None:
                return None
            if isinstance(node, h5py.Dataset):
                shape = tuple(int(v) for v in node.shape)
            elif isinstance(node, h5py.Group) and "shape" in node.attrs:
                shape = tuple(int(v) for v in np.asarray(node.attrs["shape"]).ravel())
            else:
                return None
            if shape != (n_obs, n_var):
                return (f"{where} is declared {' x '.join(map(str, shape))} but the file has {n_obs} observations "
                        f"and {n_var} variables")
            if isinstance(node, h5py.Group):
                data, indices, indptr = node.get("data"), node.get("indices"), node.get("indptr")
                if not all(isinstance(d, h5py.Dataset) for d in (data, indices, indptr)):
                    return None
                encoding = node.attrs.get("encoding-type", b"")
                encoding = encoding.decode(errors="replace") if isinstance(encoding, bytes) else str(encoding)
                n_ptr = (n_var if encoding.startswith("csc") else n_obs) + 1
                if indptr.shape != (n_ptr,) or data.ndim != 1 or indices.shape != data.shape:
                    return (f"sparse {where} has index arrays of inconsistent lengths (data {data.shape}, "
                            f"indices {indices.shape}, indptr {indptr.shape}; expected indptr ({n_ptr},))")
                if int(indptr[0]) != 0 or int(indptr[n_ptr - 1]) != data.shape[0]:
                    return (f"sparse {where}: indptr runs from {int(indptr[0])} to {int(indptr[n_ptr - 1])} where "
                            f"data holds {data.shape[0]} values")
    except Exception:  # noqa: BLE001 - not readable as HDF5 here: anndata's own error names the problem
        return None
    return None


def _read_h5ad(path: Path, layer: str | None):
    import anndata as ad

    problem = _h5ad_matrix_problem(path, layer)
    if problem:
        raise InputDataError(f"{path}: {problem}; refusing to read it. Is the file complete and written by anndata?")
    try:
        with _quiet_duplicate_names():
            adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for corrupt files
        raise InputDataError(f"{path}: cannot read AnnData file ({_first_line(exc)}). "
                             f"Is the file complete and written by anndata?") from None
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputDataError(f"{path}: empty matrix ({adata.n_obs} observations x {adata.n_vars} variables).")
    check_unique(list(adata.var_names), path, "gene")
    check_unique(list(adata.obs_names), path, "sample")
    if layer is not None:
        if layer not in adata.layers:
            raise InputDataError(f"{path}: layer '{show_id(layer)}' not found; available layers: "
                                 f"{_columns(adata.layers.keys())}. Use --layer with one of them or omit it for X.")
        X = adata.layers[layer]
    else:
        X = adata.X
    X = numeric_matrix(X, path, "X" if layer is None else f"layer '{show_id(layer)}'", list(adata.obs_names),
                       list(adata.var_names))
    return X, list(adata.obs_names), list(adata.var_names), adata.obs.copy()


def numeric_matrix(X, path, where: str, sample_ids: list, gene_ids: list, *, pick: str = "use --layer to pick"):
    """An AnnData matrix as float64 (sparse: CSR), after refusing what is not expression values.

    Refuses a missing matrix, strings, booleans or objects (naming the first non-numeric cell) and a malformed
    sparse matrix. float16 / integer / CSC input is converted, so every step sees float64 dense or CSR.

    Parameters
    ----------
    X : numpy.ndarray, scipy.sparse matrix or None
    path : path or str
        The file (or ``adata``) named first in a message.
    where : str
        Which matrix: ``X``, ``layer 'counts'``, ``raw.X``.
    sample_ids, gene_ids : list of str
        For naming the first bad cell.
    pick : str
        How the user picks another matrix (``use --layer to pick`` at the shell, ``pass layer= with`` in
        ``ig.tl``).

    Raises
    ------
    InputDataError
    """
    if X is None:
        raise InputDataError(f"{path}: no {where} matrix; {pick} a layer that holds the expression values.")
    dtype = X.dtype if hasattr(X, "dtype") else np.asarray(X).dtype
    if dtype.kind in "bcmM":
        kind = {"b": "booleans", "c": "complex numbers", "m": "time spans", "M": "dates"}[dtype.kind]
        raise InputDataError(f"{path}: {where} holds {kind}, not expression values; {pick} a numeric layer, "
                             f"or convert it.")
    if dtype.kind not in "iuf":
        values = X.toarray() if sparse.issparse(X) else np.asarray(X)
        flat = pd.Series(values.ravel())
        parsed = pd.to_numeric(flat, errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy() & flat.notna().to_numpy())
        if bad.size:
            r, c = np.unravel_index(int(bad[0]), values.shape)
            raise InputDataError(f"{path}: {where} holds text (dtype {dtype}), not numbers; first non-numeric "
                                 f"value '{show_id(values[r, c])}' at sample '{show_id(sample_ids[r])}', gene "
                                 f"'{show_id(gene_ids[c])}' ({bad.size} such cells). Expression values must be "
                                 f"numbers: {pick} a numeric layer, or convert it.")
        # numbers stored as text (or objects): converted like any other matrix
    if sparse.issparse(X):
        try:
            # scipy indexes with these arrays unchecked: an index out of range is a crash, not an error
            X.check_format(full_check=True)
        except (ValueError, TypeError, IndexError) as exc:
            raise InputDataError(f"{path}: sparse {where} is malformed ({_first_line(exc)}). Is it complete and "
                                 f"written by anndata?") from None
        return sparse.csr_matrix(X, dtype=np.float64)
    return np.asarray(X, dtype=np.float64)


def check_values(X, path: Path, sample_ids: list[str], gene_ids: list[str]) -> None:
    """Fail on NaN or infinite values, giving their count and first location."""
    data = X.data if sparse.issparse(X) else X
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        if sparse.issparse(X):
            coo = X.tocoo()
            k = int(np.flatnonzero(~np.isfinite(coo.data))[0])
            r, c = coo.row[k], coo.col[k]
        else:
            r, c = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), X.shape)
        raise InputDataError(f"{path}: {n_bad} missing (NaN) or infinite values; first at sample "
                             f"'{show_id(sample_ids[r])}', gene '{show_id(gene_ids[c])}'. Impute or remove them "
                             f"before running.")


def read_table(path: str | Path, what: str = "labels") -> pd.DataFrame:
    """Read a CSV/TSV (optionally gzipped) table with all columns as strings."""
    path = check_readable(path, what)
    fmt = detect_format(path)
    if fmt not in ("csv", "tsv"):
        raise InputDataError(f"{path}: {what} must be a CSV or TSV table (or give an .h5ad expression file "
                             f"and take labels from its obs).")
    try:
        frame = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except EOFError:
        raise InputDataError(f"{path}: the compressed file ends early (truncated download or copy?). "
                             f"Re-create or re-download it.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, zlib.error) as exc:
        msg = show_id(str(exc).strip().splitlines()[-1]) if str(exc).strip() else "no data"
        raise InputDataError(f"{path}: cannot parse {what} table ({msg}). It needs a header row and one row per "
                             f"sample, {'comma' if fmt == 'csv' else 'tab'}-separated.") from None
    if frame.shape[1] == 0:
        raise InputDataError(f"{path}: {what} table is empty.")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), shortened."""
    lines = str(exc).strip().splitlines()
    return show_id(lines[0] if lines else type(exc).__name__)


def read_labels(path: str | Path, *, label_column: str, sample_id_column: str | None = None,
                extra_columns: list[str] | None = None, sensitive_columns: list[str] | None = None) -> pd.DataFrame:
    """Read a labels table indexed by sample id.

    Parameters
    ----------
    path : str or Path
        CSV/TSV table, or an ``.h5ad`` file whose ``obs`` holds the column.
    label_column : str
        Column with the outcome.
    sample_id_column : str, optional
        Column with sample ids; the first column when not given (ignored for
        ``.h5ad``, whose obs names are the ids).
    extra_columns : list of str, optional
        Further columns that must exist (covariates).
    sensitive_columns : list of str, optional
        Further columns that must exist (``data.sensitive``).

    Returns
    -------
    pandas.DataFrame
        Indexed by sample id (str); the label column has NaN for missing values.
    """
    path = check_readable(path, "labels")
    if detect_format(path) == "h5ad":
        import anndata as ad

        try:
            with _quiet_duplicate_names():
                frame = ad.read_h5ad(path, backed="r").obs.copy()
        except Exception as exc:
            raise InputDataError(f"{path}: cannot read AnnData file ({_first_line(exc)}). "
                                 f"Is the file complete and written by anndata?") from None
        dup = _first_duplicate(list(frame.index.astype(str)))
        if dup is not None:
            raise InputDataError(f"{path}: duplicate sample id '{show_id(dup)}' in obs names. "
                                 f"Each sample must appear once in the labels.")
        frame.index = frame.index.astype(str)
        check_ids(list(frame.index), path, "sample")
        return _check_label_frame(frame, path, label_column, extra_columns, id_desc="obs names",
                                  sensitive_columns=sensitive_columns)
    frame = read_table(path, "labels")
    if sample_id_column is None:
        sample_id_column = frame.columns[0]
    elif sample_id_column not in frame.columns:
        raise InputDataError(f"{path}: sample id column '{show_id(sample_id_column)}' not found; available "
                             f"columns: {_columns(frame.columns)}. Pass one of them with --sample-id-column.")
    # rows with every cell empty (spreadsheets export trailing ones as ",,,") are not samples
    empty_row = frame.apply(lambda col: col.fillna("").str.strip() == "").all(axis=1)
    frame = frame[~empty_row.to_numpy()]
    ids = frame[sample_id_column].str.strip()
    dup = _first_duplicate(list(ids))
    if dup is not None:
        raise InputDataError(f"{path}: duplicate sample id '{show_id(dup)}' in column '{show_id(sample_id_column)}'. "
                             f"Each sample must appear once in the labels table.")
    check_ids(list(ids), path, "sample")
    frame = frame.drop(columns=[sample_id_column]).set_index(ids)
    frame.index.name = "sample_id"
    # the usual spellings of "missing" (R, pandas, Excel, SQL exports) are missing, not a class of their own
    frame = frame.replace({token: np.nan for token in LABEL_NA_TOKENS})
    return _check_label_frame(frame, path, label_column, extra_columns, id_desc=f"column '{sample_id_column}'",
                              sensitive_columns=sensitive_columns)


def _check_label_frame(frame: pd.DataFrame, path: Path, label_column: str,
                       extra_columns: list[str] | None, id_desc: str,
                       sensitive_columns: list[str] | None = None) -> pd.DataFrame:
    if label_column not in frame.columns:
        hint = ""
        if len(frame.columns) <= 1:  # one field per line: the delimiter is not the one the name says
            seen = " ".join(map(str, frame.columns)) + id_desc
            sep = next((s for s in (",", ";", "\t") if s in seen), None)
            if sep is not None:
                hint = (f" The file has a single column: is it {'tab' if sep == chr(9) else repr(sep)}-separated "
                        f"under a name that says otherwise? Use .csv for commas, .tsv for tabs.")
        raise InputDataError(f"{path}: label column '{show_id(label_column)}' not found; available columns: "
                             f"{_columns(frame.columns)} (sample ids from {id_desc}). "
                             f"Pass one of them with --label-column.{hint}")
    for col in extra_columns or []:
        if col not in frame.columns:
            raise InputDataError(f"{path}: covariate column '{show_id(col)}' (data.covariates) not found; available "
                                 f"columns: {_columns(frame.columns)}. Fix data.covariates in the config.")
    for col in sensitive_columns or []:
        if col not in frame.columns:
            raise InputDataError(f"{path}: sensitive column '{show_id(col)}' (data.sensitive) not found; available "
                                 f"columns: {_columns(frame.columns)}. Fix data.sensitive in the config.")
    return frame


def _columns(columns, n: int = 20) -> str:
    """Column names for a message: at most ``n`` of them, each shortened."""
    names = [show_id(c, 60) for c in list(columns)[:n]]
    return (", ".join(names) or "none") + (f", ... ({len(columns)} in all)" if len(columns) > n else "")


def read_gene_groups(path: str | Path) -> dict[str, str]:
    """Gene id -> group label from a TSV/CSV with columns ``gene_id`` and ``group`` (``select.group_file``).

    Rows with an empty group are left out (those genes become groups of their own).

    Raises
    ------
    InputDataError
        An unreadable file or one without the two columns.
    """
    table = read_table(path, what="group file")
    if "gene_id" not in table.columns or "group" not in table.columns:
        raise InputDataError(f"{path}: group file needs columns 'gene_id' and 'group'; found "
                             f"{', '.join(map(str, table.columns))}.")
    return {g: str(v).strip() for g, v in zip(table["gene_id"].astype(str).str.strip(), table["group"])
            if not pd.isna(v)}


def read_gene_list(path: str | Path, what: str = "truth") -> pd.DataFrame:
    """A gene table with a ``gene_id`` column, or a bare list of genes (one per line) as such a table.

    Raises
    ------
    InputDataError
        A file that is missing or unreadable.
    """
    path = check_readable(path, what)
    frame = read_table(path, what)
    if "gene_id" in frame.columns:
        return frame
    text = path.read_text() if not str(path).endswith(".gz") else gzip.open(path, "rt").read()
    genes = [line.split("\t")[0].strip() for line in text.splitlines() if line.strip()]
    return pd.DataFrame({"gene_id": genes})
