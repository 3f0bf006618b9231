"""The report's interactive tables, identifier links and captioned figures.

Everything here is inline: one small vanilla script and a few CSS rules that
the page template embeds, so the report stays one self-contained file that
loads nothing from the network. Links point out (NCBI Gene, Ensembl,
QuickGO) only when a reader clicks them.

Every table made by :func:`table` is sortable (click a header; numeric
columns sort as numbers), filterable (a search box above it) and holds all
its rows, shown a page at a time inside a card that scrolls horizontally
when the table is wider than the page. Without script the full table is
shown in a scrolled box.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

# rows embedded in one table; beyond it the page points to the TSV (20,000 rows ~ a whole genome)
MAX_EMBEDDED_ROWS = 20_000

NCBI_GENE = "https://www.ncbi.nlm.nih.gov/gene/?term={}"
ENSEMBL = "https://www.ensembl.org/id/{}"
QUICKGO = "https://www.ebi.ac.uk/QuickGO/term/{}"

_ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*[GTP]\d{6,})(\.\d+)?$")
_GO_RE = re.compile(r"GO:\d{7}")
# a token that can be a gene symbol: letters/digits with - . / _ @, starting with a letter or digit, not a number
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/-]{0,40}$")

# columns whose cells are gene symbols / gene ids / ;-separated symbol lists / gene-set names
SYMBOL_COLUMNS = {"symbol"}
GENE_ID_COLUMNS = {"gene_id", "gene_id_1", "gene_id_2"}
SYMBOL_LIST_COLUMNS = {"overlap_genes", "leading_edge"}
GENE_SET_COLUMNS = {"gene_set", "gene_sets", "description"}


def esc(value) -> str:
    """HTML-escaped text of ``value`` (quotes included, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def gene_url(token: str, *, symbol: bool) -> str | None:
    """The page about one gene identifier, or None when the token is not one.

    Ensembl gene/transcript/protein ids (a version suffix is dropped) go to
    Ensembl; with ``symbol`` any other symbol-like token goes to an NCBI Gene
    search (a search, not an id page: the same symbol names genes of several
    species, and NCBI lists them).
    """
    token = str(token).strip()
    m = _ENSEMBL_RE.match(token)
    if m:
        return ENSEMBL.format(m.group(1))
    if symbol and _SYMBOL_RE.match(token) and not _is_number(token):
        return NCBI_GENE.format(quote(token, safe=""))
    return None


def _a(url: str, text: str) -> str:
    # rel=noopener: a link never gives the opened page a handle on the report
    return f'<a href="{esc(url)}" target="_blank" rel="noopener">{esc(text)}</a>'


def linkify(column: str, text: str) -> str:
    """Escaped HTML of one cell, with identifier links where the column holds identifiers."""
    if not text:
        return ""
    if column in SYMBOL_COLUMNS or column in GENE_ID_COLUMNS:
        url = gene_url(text, symbol=column in SYMBOL_COLUMNS)
        return _a(url, text) if url else esc(text)
    if column in SYMBOL_LIST_COLUMNS or column.startswith("overlap_genes"):
        parts = [p for p in text.split(";")]
        out = []
        for p in parts:
            url = gene_url(p, symbol=True)
            out.append(_a(url, p) if url else esc(p))
        return ";<wbr>".join(out)
    if column in GENE_SET_COLUMNS:
        pieces, last = [], 0
        for m in _GO_RE.finditer(text):
            pieces.append(esc(text[last:m.start()]))
            pieces.append(_a(QUICKGO.format(m.group(0)), m.group(0)))
            last = m.end()
        pieces.append(esc(text[last:]))
        return "".join(pieces).replace(";", ";<wbr>")
    return esc(text)


def _numeric_column(values: pd.Series) -> bool:
    """True when every non-empty cell is a number (booleans are not)."""
    if values.dtype == bool or pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = values[values.notna() & (values.astype(str).str.strip() != "")]
    if not len(present) or present.map(lambda v: isinstance(v, (bool, np.bool_))).any():
        return False
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


_TABLE_COUNTER = {"n": 0}


def table(frame: pd.DataFrame | None, *, fmt, page_size: int = 25, max_chars: int = 400,
          source: str | None = None, caption: str | None = None) -> str:
    """An interactive table of all rows of ``frame``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows in the order they should first appear. Columns with no value at
        all are dropped (evidence from a step that was not given).
    fmt : callable
        Value -> display text (numbers to 4 significant digits, ...).
    page_size : int
        Rows shown per page before the reader asks for more (all rows are in the page).
    max_chars : int
        Longer plain-text cells are cut, with the full text in a tooltip.
    source : str, optional
        Relative path of the TSV the table comes from; linked under the table.
    caption : str, optional
        What the table shows, in words.

    Returns
    -------
    str
        HTML: a card with a filter box, the table and a pager.
    """
    if frame is None or not len(frame):
        return '<p class="note">(empty)</p>'
    empty = [c for c in frame.columns if frame[c].isna().all() or (frame[c].astype(str).str.strip() == "").all()]
    frame = frame.drop(columns=empty)
    n_total = len(frame)
    cut = n_total > MAX_EMBEDDED_ROWS
    if cut:
        frame = frame.head(MAX_EMBEDDED_ROWS)
    numeric = {c: _numeric_column(frame[c]) for c in frame.columns}
    head = "".join(
        f'<th data-type="{"num" if numeric[c] else "text"}" title="click to sort">{esc(c)}</th>' for c in frame.columns)
    rows = []
    columns = [str(c) for c in frame.columns]
    for values in frame.itertuples(index=False, name=None):
        cells = []
        for col, v in zip(columns, values):
            text = fmt(v)
            if numeric[col]:
                # the sort key: 12 significant digits sort every value a table can show, and do not put the
                # last bits of a float on the page (the same number computed in memory or read back from a TSV
                # can differ there, and the page must be the same bytes either way)
                raw = "" if text == "" else f"{float(v):.12g}"
                cells.append(f'<td class="num" data-v="{esc(raw)}">{esc(text)}</td>')
                continue
            if len(text) > max_chars and col not in SYMBOL_LIST_COLUMNS and col not in GENE_SET_COLUMNS:
                cells.append(f'<td title="{esc(text)}">{esc(text[:max_chars - 1])}\u2026</td>')
                continue
            # long text wraps inside a bounded box; short cells never wrap, so columns stay readable and a
            # wide table scrolls sideways in its card instead of squeezing every column
            inner = linkify(col, text)
            cells.append(f'<td><div class="wrap">{inner}</div></td>' if len(text) > 40 else f"<td>{inner}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    _TABLE_COUNTER["n"] += 1
    notes = []
    if caption:
        notes.append(caption)
    if cut:
        notes.append(f"First {MAX_EMBEDDED_ROWS:,} of {n_total:,} rows shown here; all rows are in the TSV.")
    if source:
        notes.append(f'Full table: <a href="{esc(source)}">{esc(source)}</a>.')
    cap = f'<p class="tcap">{" ".join(notes)}</p>' if notes else ""
    return (f'<div class="itable" data-page-size="{int(page_size)}" data-rows="{n_total}">'
            f'<div class="tctl"><input type="search" class="tfilter" placeholder="filter rows (all words)" '
            f'aria-label="filter rows"><span class="tcount">{n_total} rows</span></div>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f'<div class="tpager"></div>{cap}</div>')


def figure(img_html: str, caption: str) -> str:
    """A figure with its caption; nothing when there is no image."""
    if not img_html:
        return ""
    return f'<figure class="fig">{img_html}<figcaption>{caption}</figcaption></figure>'


# <a class="tsv" href="ABSOLUTE"> links to input files are made relative to the report's directory at write time
_TSV_LINK = re.compile(r'<a class="tsv" href="([^"]*)"')


def relative_links(page: str, out_dir) -> str:
    """Make the links to input files relative to ``out_dir`` (where report.html is written).

    A relative link keeps working when the run's directories are moved or copied together.
    """
    out_dir = Path(out_dir).resolve()

    def fix(m):
        rel = os.path.relpath(html.unescape(m.group(1)), out_dir)
        return f'<a class="tsv" href="{esc(Path(rel).as_posix())}"'
    return _TSV_LINK.sub(fix, page)


STYLE = """
.itable { margin: 8px 0 14px 0; max-width: 100%; }
.itable .scroll { overflow: auto; max-height: 75vh; border: 1px solid #e4e4e4; }
.itable table { margin: 0; }
.itable thead th { position: sticky; top: 0; cursor: pointer; user-select: none; white-space: nowrap; }
.itable th[aria-sort="ascending"]::after { content: " \\25B2"; }
.itable th[aria-sort="descending"]::after { content: " \\25BC"; }
.itable table { width: max-content; }
.itable td { white-space: nowrap; }
.itable td div.wrap { white-space: normal; min-width: 14em; max-width: 32em; overflow-wrap: anywhere; }
.tctl { display: flex; gap: 10px; align-items: center; margin-bottom: 4px; font-size: 12px; }
.tfilter { font-size: 12px; padding: 2px 6px; width: 16em; }
.tpager { font-size: 12px; margin-top: 4px; }
.tpager button { font-size: 11px; margin-right: 4px; }
.tcap { color: #555; font-size: 12px; margin: 4px 0; }
figure.fig { margin: 6px 12px 10px 0; max-width: 100%; flex: 0 1 auto; }
figure.fig img.plot { margin: 0; }
figure.fig figcaption { font-size: 12px; color: #444; max-width: 40em; }
"""

# sort (numbers as numbers, empty cells last), filter (every word, case-insensitive), page; no library
SCRIPT = r"""
(function () {
  function num(td) { var v = td.getAttribute('data-v'); return (v === null || v === '') ? NaN : parseFloat(v); }
  function setup(box) {
    var table = box.querySelector('table'), tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows), shown = rows, page = 0;
    var size = parseInt(box.getAttribute('data-page-size'), 10) || 25;
    var filter = box.querySelector('.tfilter'), count = box.querySelector('.tcount'), pager = box.querySelector('.tpager');
    rows.forEach(function (r, i) { r._i = i; r._t = r.textContent.toLowerCase(); });
    function draw() {
      var pages = Math.max(1, Math.ceil(shown.length / size));
      if (page >= pages) page = pages - 1;
      var lo = page * size, hi = Math.min(shown.length, lo + size), frag = document.createDocumentFragment();
      var inShown = new Set(shown);
      shown.forEach(function (r, i) { r.style.display = (i >= lo && i < hi) ? '' : 'none'; frag.appendChild(r); });
      rows.forEach(function (r) { if (!inShown.has(r)) { r.style.display = 'none'; frag.appendChild(r); } });
      tbody.appendChild(frag);
      count.textContent = (shown.length === rows.length ? rows.length + ' rows' : shown.length + ' of ' + rows.length + ' rows')
        + (shown.length ? ' (showing ' + (lo + 1) + '-' + hi + ')' : '');
      pager.innerHTML = '';
      if (pages > 1) {
        [['\u00ab first', 0], ['\u2039 prev', page - 1], ['next \u203a', page + 1], ['last \u00bb', pages - 1]].forEach(function (b) {
          var btn = document.createElement('button'); btn.type = 'button'; btn.textContent = b[0];
          btn.disabled = b[1] < 0 || b[1] >= pages || b[1] === page;
          btn.addEventListener('click', function () { page = b[1]; draw(); }); pager.appendChild(btn);
        });
        var all = document.createElement('button'); all.type = 'button'; all.textContent = 'show all';
        all.addEventListener('click', function () { size = Math.max(shown.length, 1); page = 0; draw(); });
        pager.appendChild(all);
        pager.appendChild(document.createTextNode(' page ' + (page + 1) + ' of ' + pages));
      }
    }
    function apply() {
      var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      var keep = rows.filter(function (r) { return words.every(function (w) { return r._t.indexOf(w) >= 0; }); });
      shown = keep; page = 0; draw();
    }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending', isNum = th.getAttribute('data-type') === 'num';
        Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) { o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var key = function (r) { var td = r.cells[col]; return isNum ? num(td) : td.textContent.trim().toLowerCase(); };
        rows.sort(function (a, b) {
          var x = key(a), y = key(b), ex = isNum ? isNaN(x) : x === '', ey = isNum ? isNaN(y) : y === '';
          if (ex || ey) return ex === ey ? a._i - b._i : (ex ? 1 : -1);  // empty cells last either way
          var c = isNum ? x - y : x.localeCompare(y, undefined, {numeric: true});
          return c === 0 ? a._i - b._i : (asc ? c : -c);
        });
        var pos = {}; rows.forEach(function (r, i) { pos[r._i] = i; });
        shown.sort(function (a, b) { return pos[a._i] - pos[b._i]; });
        page = 0; draw();
      });
    });
    filter.addEventListener('input', apply);
    draw();
  }
  function init() { Array.prototype.forEach.call(document.querySelectorAll('.itable'), setup); }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
})();
"""
