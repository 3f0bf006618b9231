"""The interactive report (issue 17 item 1): sortable, filterable tables with every row, identifier links,
captions on every figure, local explanations in both directions, permutation importance, the AUC wording,
running-sum plots; driven in real headless Chromium through Playwright on the demo pipeline's report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from iml_genomics.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test_data"


def run_cli(*args) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def report_args(base: Path, out: Path) -> list:
    return ["report", "--inputs", base / "train", base / "explain", base / "select", "--gene-sets",
            DATA / "demo_pathways.gmt", "--min-set-size", "5", "--permutations", "50", "--samples", "S0001,S0002",
            "--out", out]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """train -> explain (SHAP and permutation importance) -> select -> report on the demo cohort."""
    base = tmp_path_factory.mktemp("interactive")
    expr, labels, cfg = DATA / "demo_expression.csv.gz", DATA / "demo_labels.tsv", ROOT / "configs" / "demo.yaml"
    run_cli("train", "--config", cfg, "--expression", expr, "--labels", labels, "--cv-folds", "3",
            "--out", base / "train")
    run_cli("explain", "--model", base / "train", "--config", cfg, "--expression", expr, "--labels", labels,
            "--method", "all", "--samples", "S0001,S0002", "--out", base / "explain")
    run_cli("select", "--config", cfg, "--expression", expr, "--labels", labels, "--out", base / "select")
    run_cli(*report_args(base, base / "report"))
    return base


# ---------------------------------------------------------------------------------------------- no browser
def test_links_point_to_the_right_databases():
    from iml_genomics.report.interactive import linkify

    assert 'href="https://www.ncbi.nlm.nih.gov/gene/?term=TP53"' in linkify("symbol", "TP53")
    # a versioned Ensembl id goes to Ensembl without its version, from an id column too
    assert 'href="https://www.ensembl.org/id/ENSG00000141510"' in linkify("gene_id", "ENSG00000141510.17")
    # a probe id is not a symbol: no NCBI search from an id column
    assert "href" not in linkify("gene_id", "1007_s_at")
    # numbers and text with spaces are never linked as symbols
    assert "href" not in linkify("symbol", "12.5") and "href" not in linkify("symbol", "PUTATIVE PROTEIN")
    cell = linkify("gene_set", "apoptotic process (GO:0006915)")
    assert 'href="https://www.ebi.ac.uk/QuickGO/term/GO:0006915"' in cell and cell.startswith("apoptotic process (")
    both = linkify("leading_edge", "CD33;ENSG00000105383")
    assert 'term=CD33"' in both and 'ensembl.org/id/ENSG00000105383"' in both
    # HTML in a cell is escaped, never interpreted
    assert "<b>" not in linkify("gene_set", "<b>x</b> GO:0000001")


def test_displayed_symbol_falls_back_to_the_id():
    from iml_genomics.report.page_parts import display_symbols

    ids = pd.Series(["1007_s_at", "201890_at", "AFFX-X_at", "g4"])
    keys = pd.Series(["1007_S_AT", "RRM2", "PUTATIVE PROTEIN (GB", None])
    # unmapped (the key is the upper-cased id), description words and missing keys all show the id
    assert display_symbols(ids, keys).tolist() == ["1007_s_at", "RRM2", "AFFX-X_at", "g4"]


def test_running_sum_reproduces_prerank_enrichment_scores():
    from iml_genomics import genesets as gs
    from iml_genomics.report.enrichment_plot import running_sum

    rng = np.random.default_rng(3)
    keys = [f"K{i:03d}" for i in range(300)]
    scores = pd.Series(rng.normal(size=300), index=keys)
    scores.iloc[:5] = 0.0  # ties are broken by key, as prerank does
    sets = {f"S{j}": list(rng.choice(keys, size=int(rng.integers(5, 40)), replace=False)) for j in range(25)}
    sets["TOP"] = list(scores.sort_values(ascending=False).index[:15])
    sets["BOTTOM"] = list(scores.sort_values().index[:15])
    pre = gs.prerank(scores, sets, n_permutations=20, random_state=0).set_index("gene_set")
    for name, members in sets.items():
        curve, hits, es = running_sum(scores, members)
        assert es == pytest.approx(pre.loc[name, "es"], abs=1e-12), name
        assert len(hits) == len(members) and abs(curve[-1]) < 1e-9
    assert running_sum(scores, sets["TOP"])[2] > 0.9 and running_sum(scores, sets["BOTTOM"])[2] < -0.9


def test_gene_set_bars_switch_to_p_when_every_q_is_equal():
    from iml_genomics.report.page_parts import gene_set_bar_scale

    equal = pd.DataFrame({"q_value": [0.62] * 6, "gsea_q_value": [0.8] * 6,
                          "p_value": [0.01, 0.05, 0.2, 0.3, 0.5, 0.9], "gsea_p_value": [0.1] * 6})
    assert gene_set_bar_scale(equal) == "p"
    varied = equal.assign(gsea_q_value=[0.1, 0.2, 0.3, 0.4, 0.5, 0.8])
    assert gene_set_bar_scale(varied) == "q"


def test_page_states_counts_directions_and_auc(demo):
    page = (demo / "report" / "report.html").read_text()
    ranking = pd.read_csv(demo / "explain" / "gene_ranking.tsv", sep="\t")
    n_nonzero = int((ranking["mean_abs_shap"] > 0).sum())
    assert 0 < n_nonzero < len(ranking)  # the demo's L1 model is sparse: the count must not be the gene total
    assert f"<th>genes with non-zero attribution</th><td>{n_nonzero} of {len(ranking)} explained</td>" in page
    assert "genes used by the final model" not in page
    # local explanations: both directions of each sample, the class explained named, the label apart
    local = pd.read_csv(demo / "explain" / "local_explanations.tsv", sep="\t")
    assert {"up", "down"} <= set(local["direction"])
    assert "Sample S0002 (label: normal): explained class tumour" in page
    assert page.count("down (towards normal)") == int((local["direction"] == "down").sum())
    assert page.count("up (towards tumour)") == int((local["direction"] == "up").sum())
    assert '>explained class</th>' in page
    # permutation importance shown next to SHAP
    assert "<h3>Permutation importance</h3>" in page and ">permutation_importance</th>" in page
    # the ROC legend's AUC (pooled) against the table's (mean of folds), in words, with both numbers
    from sklearn.metrics import roc_auc_score

    oof = pd.read_csv(demo / "train" / "oof_predictions.tsv", sep="\t")
    pooled = roc_auc_score(oof["y_true"] == "tumour", oof["prob_tumour"])
    cv = pd.read_csv(demo / "train" / "cv_metrics.tsv", sep="\t")
    folds = cv.loc[~cv["split"].isin(["mean", "sd"]), "auroc"].mean()
    assert f"here pooled {pooled:.3f} vs mean of folds {folds:.3f}" in page
    assert "positive SHAP value pushes the prediction towards <strong>tumour</strong>" in page


def test_links_to_the_runs_own_files_resolve(demo):
    out = demo / "report"
    page = (out / "report.html").read_text()
    hrefs = re.findall(r'<a class="tsv" href="([^"]+)"', page)
    assert {"../train/cv_metrics.tsv", "../explain/gene_ranking.tsv", "../explain/local_explanations.tsv",
            "../select/knockoff_selection.tsv"} <= set(hrefs)
    assert all((out / h).is_file() for h in hrefs)
    for own in ("biomarkers.tsv", "gene_sets.tsv"):
        assert f'<a href="{own}">{own}</a>' in page and (out / own).is_file()


def test_same_seed_same_page_but_the_timestamp(demo):
    out = demo / "report"
    first = (out / "report.html").read_text()
    run_cli(*report_args(demo, out))  # the same command again into the same directory
    second = (out / "report.html").read_text()

    def strip(page):
        return re.sub(r"generated \S+ by iml-genomics", "generated TIME by iml-genomics", page)
    assert len(re.findall(r"generated \S+ by iml-genomics", first)) == 1
    assert strip(first) == strip(second)


# ------------------------------------------------------------------------------------------ real Chromium
def _browser():
    pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
    return pw, binary



# images without a <figure> caption of at least a sentence
UNCAPTIONED_JS = """() => Array.from(document.images).filter(i => {
    const f = i.closest('figure'); const c = f && f.querySelector('figcaption');
    return !c || c.textContent.trim().length < 40; }).map(i => i.alt)"""

# sections wider than their card, and elements poking out of their section (content of a scrolling box aside)
OVERFLOW_JS = """() => {
    const bad = [];
    document.querySelectorAll('section').forEach(s => {
      if (s.scrollWidth > s.clientWidth + 1) bad.push(s.id + ' ' + s.scrollWidth + '>' + s.clientWidth);
      const right = s.getBoundingClientRect().right;
      s.querySelectorAll('*').forEach(e => {
        if (e.closest('.scroll') && !e.classList.contains('scroll')) return;  // scrolls inside its card
        if (e.getBoundingClientRect().right > right + 1) bad.push(s.id + ' ' + e.tagName + '.' + e.className);
      });
    });
    return bad; }"""

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def page(demo):
    pw, binary = _browser()
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = []
        pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
              else None)
        pg.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        pg.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        # the page must load nothing from the network: any http(s) request is recorded and refused
        pg.route(re.compile(r"^https?://"), lambda route: (problems.append(f"network: {route.request.url}"),
                                                             route.abort()))
        pg.goto((demo / "report" / "report.html").as_uri())
        pg.wait_for_load_state("load")
        pg.problems = problems
        yield pg
        browser.close()


def _visible(table, col: int, attr: str | None = None) -> list:
    return table.evaluate(
        """(t, a) => Array.from(t.tBodies[0].rows).filter(r => r.style.display !== 'none')
                    .map(r => a.attr ? r.cells[a.col].getAttribute(a.attr) : r.cells[a.col].textContent)""",
        {"col": col, "attr": attr})


def test_page_renders_with_no_errors(page):
    assert page.title() == "iml-genomics report"
    assert page.locator("section").count() >= 9
    widths = page.evaluate("() => Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 10 and all(w > 100 for w in widths), widths
    assert page.problems == []


def test_every_figure_has_a_caption(page):
    assert page.evaluate(UNCAPTIONED_JS) == []
    captions = page.locator("figcaption").all_inner_texts()
    assert any("positive SHAP value pushes the prediction towards tumour" in c for c in captions)
    assert any(c.startswith("Running sum of") for c in captions)
    assert any("red bars push the model output towards tumour, blue bars towards normal" in c for c in captions)


def test_every_table_sorts_numbers_as_numbers(page):
    tables = page.locator(".itable table")
    n = tables.count()
    assert n >= 7
    sorted_cols = 0
    for i in range(n):
        table = tables.nth(i)
        heads = table.locator("thead th")
        types = heads.evaluate_all("ths => ths.map(t => t.getAttribute('data-type'))")
        rows = table.evaluate("t => t.tBodies[0].rows.length")
        for col, kind in enumerate(types):
            if kind != "num":
                continue
            every = [float(v) for v in table.evaluate(
                "(t, c) => Array.from(t.tBodies[0].rows).map(r => r.cells[c].getAttribute('data-v'))", col) if v]
            heads.nth(col).click()
            shown = [float(v) for v in _visible(table, col, "data-v") if v]
            assert shown == sorted(shown) and (not every or shown[0] == min(every)), (i, col)
            heads.nth(col).click()
            shown = [float(v) for v in _visible(table, col, "data-v") if v]
            assert shown == sorted(shown, reverse=True) and (not every or shown[0] == max(every)), (i, col)
            assert table.evaluate("t => t.tBodies[0].rows.length") == rows  # sorting never drops a row
            sorted_cols += 1
            break
    assert sorted_cols >= 6


def test_numeric_sort_is_not_text_sort(page):
    # biomarkers: explain_rank holds 1..400; as text "10" < "2", as numbers 2 < 10
    table = page.locator("#biomarkers .itable table")
    heads = table.locator("thead th")
    names = heads.all_inner_texts()
    col = names.index("explain_rank")
    heads.nth(col).click()
    if heads.nth(col).get_attribute("aria-sort") != "ascending":
        heads.nth(col).click()
    first = [int(t) for t in _visible(table, col)[:12] if t]
    assert first == sorted(first) and first[:3] == [1, 2, 3]


def test_filter_and_full_rows(page):
    box = page.locator("#biomarkers .itable")
    table = box.locator("table")
    total = table.evaluate("t => t.tBodies[0].rows.length")
    assert total == 400  # every gene, not the first 25
    assert len(_visible(table, 0)) == 25
    box.locator(".tfilter").fill("G00063")
    shown = table.evaluate("t => Array.from(t.tBodies[0].rows).filter(r => r.style.display !== 'none')"
                           ".map(r => r.textContent)")
    assert 1 <= len(shown) < total and all("G00063" in r for r in shown)
    assert box.locator(".tcount").inner_text().startswith(f"{len(shown)} of {total} rows")
    box.locator(".tfilter").fill("")
    box.locator(".tpager button", has_text="show all").click()
    assert len(_visible(table, 0)) == total


def test_links_have_the_right_hrefs(page):
    links = page.locator("#biomarkers td a").evaluate_all("as => as.map(a => [a.textContent, a.href])")
    assert links and all(href == f"https://www.ncbi.nlm.nih.gov/gene/?term={text}" for text, href in links)
    gene_set_links = page.locator("#genesets td a").evaluate_all("as => as.map(a => [a.textContent, a.href])")
    assert any("ncbi.nlm.nih.gov/gene/?term=" in h for _, h in gene_set_links)
    tsv = page.locator("a.tsv").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert "../train/cv_metrics.tsv" in tsv


def test_nothing_wider_than_its_card(page):
    over = page.evaluate(OVERFLOW_JS)
    assert over == []
    # a wide table really is wider than its card, and scrolls inside it
    wide = page.evaluate("""() => Array.from(document.querySelectorAll('.itable .scroll'))
        .filter(d => d.scrollWidth > d.clientWidth).length""")
    assert wide >= 1


def test_screenshots(page, tmp_path):
    shot = tmp_path / "report_full.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 200_000
    summary = json.loads(page.evaluate("() => JSON.stringify({n: document.querySelectorAll('figcaption').length})"))
    assert summary["n"] == page.evaluate("() => document.images.length")


def test_local_explanations_without_a_class_read_as_raising_or_lowering():
    """Regression: the local table has no class; directions say what the gene does to the prediction."""
    from iml_genomics.report.inputs import ReportInputs
    from iml_genomics.report.page_parts import local_section

    rows = [("S1", np.nan, 3.2, 1.0, d, r, g, v, 0.5) for d, r, g, v in
            [("up", 1, "TP53", 0.8), ("up", 2, "MYC", 0.3), ("down", 1, "ENSG00000141510.2", -0.4)]]
    local = pd.DataFrame(rows, columns=["sample_id", "class", "prediction", "base_value", "direction", "rank",
                                        "gene_id", "shap_value", "expression_value"])
    page = local_section(ReportInputs(local=local), ["S1"], {}, true_labels={"S1": "4.1"}, classes=None)
    # no class to name: the empty column is dropped rather than shown as "nan"
    assert "<h3>Sample S1 (label: 4.1)</h3>" in page and "explained class</th>" not in page
    assert page.count("up (raises the prediction)") == 2 and page.count("down (lowers the prediction)") == 1
    assert "red bars raise the prediction, blue bars lower it" in page and "nan" not in page.lower()
    assert 'href="https://www.ensembl.org/id/ENSG00000141510"' in page


def test_the_layout_checks_catch_what_they_look_for(page):
    """The overflow and caption checks fail on a page built to fail them (then the page is put back)."""
    page.evaluate("""() => {
        const d = document.createElement('div'); d.id = '__wide'; d.style.width = '3000px'; d.textContent = 'x';
        document.querySelector('#cv').appendChild(d);
        const i = document.createElement('img'); i.id = '__bare'; i.alt = 'bare';
        document.querySelector('#cv').appendChild(i); }""")
    try:
        assert any(b.startswith("cv") for b in page.evaluate(OVERFLOW_JS))
        assert page.evaluate(UNCAPTIONED_JS) == ["bare"]
    finally:
        page.evaluate("() => { document.getElementById('__wide').remove(); document.getElementById('__bare').remove(); }")
    assert page.evaluate(OVERFLOW_JS) == [] and page.evaluate(UNCAPTIONED_JS) == []
