"""Screenshots of a report page in headless Chromium for docs/report.md (docs/report_*.png).

Usage: python scripts/report_screenshots.py REPORT_DIR [OUT_DIR]

REPORT_DIR holds report.html (e.g. the demo pipeline's report, docs/report.md "The HTML page");
OUT_DIR defaults to docs/. Needs playwright (the `test` extra) and Debian's chromium.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


def main(report_dir: str, out_dir: str = "docs") -> None:
    from playwright.sync_api import sync_playwright

    out = Path(out_dir)
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("report_screenshots: chromium not found (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((Path(report_dir) / "report.html").resolve().as_uri())
        # the sticky navigation bar would be drawn over element screenshots taken further down the page
        page.add_style_tag(content="nav { position: static !important; }")
        page.locator("#data").screenshot(path=str(out / "report_summary.png"))
        # the biomarker table sorted by a numeric column (descending |effect| first) and filtered
        heads = page.locator("#biomarkers thead th")
        names = heads.all_inner_texts()
        heads.nth(names.index("mean_abs_shap")).click()
        heads.nth(names.index("mean_abs_shap")).click()
        page.locator("#biomarkers .tfilter").fill("yes")
        page.locator("#biomarkers .itable").screenshot(path=str(out / "report_table.png"))
        page.locator("#shap .plots").first.screenshot(path=str(out / "report_shap.png"))
        page.locator("#genesets .plots").nth(1).screenshot(path=str(out / "report_running_sum.png"))
        page.locator("#local").screenshot(path=str(out / "report_local.png"))
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
