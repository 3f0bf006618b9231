"""The documentation promises what the code does."""

from __future__ import annotations

from conftest import ROOT
from iml_genomics.config import config_keys, config_reference_markdown, load_config


def test_config_doc_lists_every_key_as_the_code_declares_it():
    doc = (ROOT / "docs" / "config.md").read_text()
    assert config_reference_markdown() in doc, "regenerate the table in docs/config.md from config_reference_markdown()"
    for key, *_ in config_keys():
        assert f"`{key}`" in doc


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name == "snakemake.yaml":
            continue
        load_config(path)


def test_readme_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && iml-genomics run configs/demo.yaml --out results/demo" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[test]" && python -m pytest -n 2 -q'
    assert test_command in readme and test_command in ci
