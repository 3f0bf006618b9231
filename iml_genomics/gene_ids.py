"""Gene identifier harmonisation: symbols from probe descriptions, Ensembl versions, aliases.

A microarray gene map often has no symbol column, only a free-text description
written by whoever annotated the chip (Golub et al.'s Hu6800 file, GEO platform
tables). Taking its first word turns descriptions such as ``"GB DEF = Rer1
protein"`` or ``"PUTATIVE SERINE/THREONINE KINASE"`` into fake symbols (GB,
PUTATIVE) that then show up in the report and can even match a gene set. This
module reads a symbol out of a description only where the description has the
shape of an annotation that names one (see :func:`symbol_from_description`) and
otherwise leaves the probe unmapped: an unmapped probe keeps its own id.

No maintained Python package ships the HGNC alias / previous-symbol table for
offline use (``mygene``, ``gene-thesaurus``, ``biothings-client`` all fetch it
at run time), so aliases come from a table the user supplies
(``report.alias_map``, docs/report.md "Gene identifiers").
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from iml_genomics.errors import InputDataError
from iml_genomics.io.ids import show_id

# an HGNC-style symbol: upper-case letters and digits, inner '-' or '.', e.g. CD33, HLA-DRB1, C1orf27 is
# upper-cased before the test (C1ORF27); a symbol is at least two characters and starts with a letter
SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:[-.][A-Z0-9]+)*$")
# Ensembl stable ids with a version suffix (ENSG00000141510.17, ENSMUST00000000001.4, ..._PAR_Y kept apart)
_ENSEMBL_VERSION_RE = re.compile(r"^(ENS[A-Z]*[GTPERS]\d{6,})\.\d+((?:_PAR_Y)?)$", re.IGNORECASE)
# "... (IL10) gene", "... (DAXX) mRNA": a parenthesised name right before the GenBank molecule word;
# a leading lower-case 'h' (hIGFBP1) is the authors' "human" prefix
_PAREN_RE = re.compile(r"\((h?[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)\)\s*(?:mRNA|gene|cDNA)\b")

# Words that start descriptions but are never gene symbols. The shape test below already rejects
# almost all of them (an all-upper-case description names a protein, not a gene); this list is the
# second guard for the ones that would pass it ("GB DEF = ...", "X-LINKED helicase ...").
DESCRIPTION_WORDS = frozenset("""
    GB DEF PUTATIVE PROBABLE POSSIBLE HYPOTHETICAL PREDICTED UNKNOWN UNNAMED NOVEL SIMILAR HOMOLOG HOMOLOGUE
    PROTEIN PROTEINS GENE GENES MRNA CDNA DNA RNA EST ESTS CLONE CLONES ORF CDS PARTIAL COMPLETE SEQUENCE
    FRAGMENT PRECURSOR TRANSCRIPT TRANSCRIPTION TRANSCRIPTIONAL FACTOR RECEPTOR KINASE ANTIGEN SUBUNIT
    CHAIN FAMILY MEMBER DOMAIN REGION LOCUS HUMAN MOUSE RAT X-LINKED Y-LINKED T-CELL B-CELL CELL NUCLEAR
    MITOCHONDRIAL MAJOR MINOR SMALL LARGE DUAL ZINC HISTONE KERATIN CONTROL ENDOGENOUS AFFX TYPE CLASS
    ALPHA BETA GAMMA DELTA LIKE RELATED ASSOCIATED SPECIFIC
    ATP ADP AMP GTP GDP CAMP CGMP NAD NADH NADP NADPH FAD CPG CACCC TATA BZIP LIM MHC SH2 SH3 PDZ KRAB FK-506
""".split())

_MOLECULE_WORDS = frozenset({"gene", "genes", "mrna", "cdna", "protein", "dna", "rna", "transcript"})

SOURCES = ("symbol_column", "description_leading", "description_parenthesis", "alias", "measured_id")


def strip_ensembl_version(identifier: str) -> str:
    """``ENSG00000141510.17`` -> ``ENSG00000141510``; anything else unchanged.

    GENCODE's ``_PAR_Y`` copies keep their suffix (they are distinct rows of a
    count matrix; stripping would make them collide with the X copy).
    """
    m = _ENSEMBL_VERSION_RE.match(identifier)
    return m.group(1) + m.group(2) if m else identifier


def is_symbol(token: str) -> bool:
    """Whether ``token`` (upper-cased) has the shape of a gene symbol and is not a description word."""
    t = token.strip().upper()
    return len(t) >= 2 and bool(SYMBOL_RE.match(t)) and t not in DESCRIPTION_WORDS


def symbol_from_description(description: str) -> tuple[str | None, str | None]:
    """A gene symbol named by a probe description, or None.

    Two shapes name a symbol:

    - ``"SYMBOL Name of the gene"`` (the Hu6800/UniGene style): the first word
      is a symbol and the second word is either the same word (``"GRO2 GRO2
      oncogene"``) or written in mixed/lower case (``"CD33 CD33 antigen"``,
      ``"HLA-C Major histocompatibility complex"``). A description written
      entirely in capitals (``"PROTEASOME COMPONENT C8"``, ``"PROBABLE G
      PROTEIN-COUPLED RECEPTOR"``) is a SwissProt protein name, not a symbol
      followed by a name, and yields nothing.
    - ``"Name (SYMBOL) mRNA|gene|cDNA"`` (GenBank definition lines): the
      parenthesised name, which is the authors' name and may be an alias.

    Returns
    -------
    (symbol, source) : tuple
        ``source`` is ``"description_leading"`` or ``"description_parenthesis"``;
        ``(None, None)`` when the description names no symbol.
    """
    text = str(description).strip()
    words = text.split()
    if len(words) >= 2:
        first, second = words[0], words[1]
        second_word = second.strip(",;:()")
        if (first == first.upper() and is_symbol(first)
                and (second_word.upper() == first.upper() or any(c.islower() for c in second_word))
                # "FX protein mRNA", "M4 protein": a two-letter name before a molecule word is the authors'
                # label for a clone, too short to stand for one gene
                and not (len(first) < 3 and second_word.lower() in _MOLECULE_WORDS)):
            return first.upper(), "description_leading"
    m = _PAREN_RE.search(text)
    if m:
        token = m.group(1)
        token = token[1:] if token.startswith("h") else token
        if len(token) >= 3 and is_symbol(token):
            return token.upper(), "description_parenthesis"
    return None, None


def symbol_from_symbol_cell(value: str) -> str | None:
    """The symbol in a symbol column's cell: first of ``"A /// B"`` / ``"A;B"`` / ``"A|B"``, or None.

    Placeholders (``---``, ``NA``, empty) and values that are not symbol-shaped
    give None, so the probe keeps its id.
    """
    text = str(value).strip()
    first = re.split(r"\s*(?:///|//|;|\||,)\s*|\s+", text, maxsplit=1)[0].strip() if text else ""
    if first.upper() in ("", "---", "NA", "N/A", "NAN", "NONE", "NULL"):
        return None
    first = strip_ensembl_version(first)
    if first.upper().startswith("ENS"):
        return first.upper()
    return first.upper() if SYMBOL_RE.match(first.upper()) and first.upper() not in DESCRIPTION_WORDS else None


_DESCRIPTION_COLUMNS = ("description", "desc", "definition", "gene_title", "gene_description", "title", "name")


def looks_like_descriptions(column: str, values: pd.Series) -> bool:
    """Whether a gene map's symbol column holds free-text descriptions (named so, or mostly 3+ words)."""
    if column.strip().lower() in _DESCRIPTION_COLUMNS:
        return True
    words = values.dropna().astype(str).str.split().str.len()
    return bool(len(words)) and float(words.median()) >= 3


def symbols_from_column(values: pd.Series, *, is_description: bool) -> tuple[pd.Series, pd.Series]:
    """Symbol and its source for every cell of a gene map's symbol column (None where unmapped)."""
    symbols, sources = [], []
    for v in values.fillna("").astype(str):
        if is_description:
            s, src = symbol_from_description(v)
        else:
            s = symbol_from_symbol_cell(v)
            # a 'symbol' column that holds descriptions after all: parse them as such
            if s is None and len(v.split()) > 1:
                s, src = symbol_from_description(v)
            else:
                src = "symbol_column" if s else None
        symbols.append(s)
        sources.append(src)
    return pd.Series(symbols, index=values.index, dtype=object), pd.Series(sources, index=values.index, dtype=object)


def read_alias_map(path: str | Path) -> dict[str, str]:
    """Alias table: a header line, then ``alias<TAB>symbol`` (CSV/TSV, optionally gzipped).

    The first two columns are used (for an HGNC download: ``Alias symbol``,
    ``Approved symbol``; previous symbols work the same way). Keys and values
    are upper-cased. An alias listed with two different symbols is ambiguous
    and refused (one line naming it), since either choice would be a guess.
    """
    from iml_genomics.io import read_table

    table = read_table(path, "alias map")
    if table.shape[1] < 2:
        raise InputDataError(f"{path}: alias map needs two columns (alias, symbol); found "
                             f"{table.shape[1]}. Fix report.alias_map.")
    aliases: dict[str, str] = {}
    for row, (alias, symbol) in enumerate(zip(table.iloc[:, 0], table.iloc[:, 1]), start=2):
        a, s = str(alias).strip().upper(), str(symbol).strip().upper()
        if not a or not s:
            continue
        if not SYMBOL_RE.match(s):
            raise InputDataError(f"{path}: row {row}: '{show_id(symbol)}' is not a gene symbol. Fix the alias map "
                                 f"(report.alias_map): column 2 holds the approved symbol.")
        if aliases.get(a, s) != s:
            raise InputDataError(f"{path}: row {row}: alias '{show_id(alias)}' maps to both '{aliases[a]}' and "
                                 f"'{s}'. Keep one row per alias in report.alias_map.")
        aliases[a] = s
    return aliases


def apply_aliases(symbols: pd.Series, sources: pd.Series, aliases: dict[str, str] | None):
    """Replace aliases by their approved symbol; the source of a replaced symbol becomes ``alias``."""
    if not aliases:
        return symbols, sources
    new = symbols.map(lambda s: aliases.get(s, s) if isinstance(s, str) else s)
    changed = new.notna() & (new != symbols)
    return new, sources.where(~changed, "alias")


def mapping_summary(gene_ids, keys: pd.Series, gene_map: pd.Series | None) -> dict:
    """How many measured ids got a symbol, by source (``summary.json`` ``gene_ids`` and the report).

    An id counts as mapped when the gene map (description, symbol column or
    alias) gave it a symbol; ids left as themselves are ``n_unmapped``.
    """
    from iml_genomics.genesets import normalise_ids

    gene_ids = [str(g) for g in gene_ids]
    src = (gene_map.attrs.get("sources") or {}) if gene_map is not None else {}
    own = normalise_ids(gene_ids)
    key_values = keys.reindex(gene_ids).to_numpy()
    by_source = {s: 0 for s in SOURCES}
    for g, k, o in zip(gene_ids, key_values, own):
        if k != o:
            by_source[src.get(g.strip(), src.get(strip_ensembl_version(g.strip()), "symbol_column"))] += 1
        else:
            by_source["measured_id"] += 1
    n = len(gene_ids)
    n_mapped = n - by_source["measured_id"]
    return {"n_measured_ids": n, "n_mapped": n_mapped, "n_unmapped": by_source["measured_id"],
            "mapping_rate": round(n_mapped / n, 6) if n else float("nan"),
            "by_source": {k: v for k, v in by_source.items() if v},
            "gene_map": gene_map.attrs.get("source") if gene_map is not None else None,
            "alias_map": gene_map.attrs.get("alias_source") if gene_map is not None else None}


def load_gene_map(gene_map_path, gene_ids, *, id_column=None, symbol_column=None, alias_map=None):
    """Measured id -> symbol from the config's gene map and alias map (None when neither is given).

    With only an alias map the measured ids themselves are looked up in it (a
    cohort measured in old symbols).
    """
    from iml_genomics.genesets import normalise_ids, read_gene_map

    aliases = read_alias_map(alias_map) if alias_map else None
    if gene_map_path:
        series = read_gene_map(gene_map_path, gene_ids, id_column=id_column, symbol_column=symbol_column,
                               aliases=aliases)
    elif aliases:
        ids = [str(g).strip() for g in gene_ids]
        own = pd.Series(normalise_ids(ids), index=ids)
        hit = own.isin(list(aliases))
        series = own[hit].map(aliases).rename("symbol")
        series = series[~series.index.duplicated(keep="first")]
        series.attrs.update(source=None, sources={g: "alias" for g in series.index})
    else:
        return None
    if aliases:
        series.attrs["alias_source"] = str(alias_map)
    return series
