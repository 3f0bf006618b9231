"""Regression tests from the adversarial review of the issue-11 select code (small and fast)."""

import warnings

import numpy as np

from iml_genomics.select import knockoff_select


def _ar1(n, p, rho, seed):
    rng = np.random.default_rng(seed)
    X = np.empty((n, p))
    X[:, 0] = rng.standard_normal(n)
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return X, rng


def test_group_knockoffs_on_factor_blocks_check_the_model_they_used():
    # group knockoffs sample from the dense form of the fitted model; with factor_blocks that model keeps the
    # local correlation, so the diagnostics must refit factor_blocks (not the plain factor model, which misses
    # AR(1) 0.8 neighbours and fails the check on a correct construction) and the summary must name it
    X, rng = _ar1(240, 60, 0.8, seed=1)
    y = X[:, 10] + rng.standard_normal(X.shape[0])
    groups = [f"m{i // 2}" for i in range(X.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = knockoff_select(X, y, [f"g{i}" for i in range(X.shape[1])], task="regression",
                              covariance="factor_blocks", groups=groups)
    diag = res.summary["diagnostics"]
    assert res.summary["covariance_model"] == "factor_blocks"
    assert res.summary["n_blocks"] is not None and res.summary["n_blocks"] >= 1
    assert diag["exchangeability"]["covariance_model"] == "factor_blocks"
    assert diag["exchangeability"]["passed"], diag["exchangeability"]["fraction_exceeding"]


def test_dcrt_with_no_residual_degrees_of_freedom_is_one_line_input_error():
    # 8 samples, intercept + 6 covariates: one residual dimension, a t reference with 0 degrees of freedom and
    # NaN p-values (scipy raised a bare ValueError from the BH step); refuse with a message naming the cause
    from iml_genomics.errors import InputDataError
    from iml_genomics.select.dcrt import dcrt_select

    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 4))
    y = 3 * X[:, 0] + rng.standard_normal(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dcrt_select(X, y, list("abcd"), task="regression", covariates=rng.standard_normal((8, 6)))
        except InputDataError as exc:
            msg = str(exc)
        else:
            raise AssertionError("no error")
    assert "\n" not in msg and "covariates" in msg and "8 samples" in msg
    # one covariate fewer leaves 2 residual dimensions: runs, p-values in [0, 1]
    res = dcrt_select(X, y, list("abcd"), task="regression", covariates=rng.standard_normal((8, 5)),
                      check_model=False)
    assert np.all((res.p_values >= 0) & (res.p_values <= 1))


def test_dcrt_summary_has_the_block_keys_and_the_documented_diagnostics():
    # the common summary keys (n_blocks, max_block_size) are in the dCRT summary too, and docs/select.md says
    # the dCRT has an exchangeability diagnostic (the CLI's --strict reads it), not "no diagnostics block"
    from pathlib import Path

    from iml_genomics.select.dcrt import dcrt_select

    X, rng = _ar1(120, 30, 0.8, seed=3)
    y = X[:, 5] + rng.standard_normal(120)
    res = dcrt_select(X, y, [f"g{i}" for i in range(30)], task="regression", covariance="factor_blocks")
    assert res.summary["n_blocks"] is not None and res.summary["max_block_size"] >= 2
    assert "passed" in res.summary["diagnostics"]["exchangeability"]
    res_lw = dcrt_select(X, y, [f"g{i}" for i in range(30)], task="regression", covariance="ledoit_wolf",
                         check_model=False)
    assert res_lw.summary["n_blocks"] is None and res_lw.summary["max_block_size"] is None
    doc = (Path(__file__).resolve().parents[1] / "docs" / "select.md").read_text()
    assert "there is no `diagnostics` block" not in doc


def test_constant_gene_is_named_by_id_for_both_methods():
    # the refusal named "first column index 3" of the *filtered* matrix (not a column of the user's file once
    # preprocessing drops genes) and said "knockoffs" for the dCRT; it must name the gene id and the method
    import pytest

    from iml_genomics.errors import InputDataError
    from iml_genomics.select.dcrt import dcrt_select

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6)) + 5.0
    X[:, 3] = 5.0
    genes = ["A", "B", "C", "KONST", "E", "F"]
    y = np.array(["a", "b"] * 20)
    with pytest.raises(InputDataError, match="'KONST'.*dCRT"):
        dcrt_select(X, y, genes, task="classification")
    with pytest.raises(InputDataError, match="'KONST'.*knockoffs"):
        knockoff_select(X, y, genes, task="classification")
    # a gene the covariates explain exactly is constant once they are regressed out: named the same way
    X[:, 3] = rng.standard_normal(40)
    with pytest.raises(InputDataError, match="'KONST'.*after the covariates"):
        dcrt_select(X, y, genes, task="classification", covariates=2.0 * X[:, 3] + 1.0)


def test_factor_model_on_one_gene_names_the_gene_count_not_the_samples():
    # k_max = min(rank, n - 2, p - 1) is 0 for p = 1 whatever n; the message blamed the 40 samples
    import pytest

    from iml_genomics.errors import InputDataError
    from iml_genomics.select.covariance import fit_covariance

    X = np.random.default_rng(0).standard_normal((40, 1))
    with pytest.raises(InputDataError, match="1 gene"):
        fit_covariance(X, method="factor_blocks")
    with pytest.raises(InputDataError, match="2 samples"):
        fit_covariance(np.random.default_rng(0).standard_normal((2, 5)), method="factor")


def test_dcrt_refuses_a_positive_class_that_is_not_a_class():
    # class_targets fell back to the last class when positive_class was not a label ('Case' for 'case'), while
    # the summary recorded 'Case': the sign of w then meant the opposite of what the summary said
    import pytest

    from iml_genomics.errors import ConfigError
    from iml_genomics.select.dcrt import dcrt_select

    rng = np.random.default_rng(4)
    X = rng.standard_normal((60, 8))
    y = np.where(X[:, 0] + 0.5 * rng.standard_normal(60) > 0, "case", "control")
    genes = [f"g{i}" for i in range(8)]
    with pytest.raises(ConfigError, match="'Case'.*case, control"):
        dcrt_select(X, y, genes, task="classification", positive_class="Case", check_model=False)
    with pytest.raises(ConfigError, match="'Case'"):
        knockoff_select(X, y, genes, task="classification", positive_class="Case", check_swap=False)
    # a real class works and decides the sign of w (gene 0 is higher in 'case')
    case = dcrt_select(X, y, genes, task="classification", positive_class="case", check_model=False)
    control = dcrt_select(X, y, genes, task="classification", positive_class="control", check_model=False)
    w_case = case.table.set_index("gene_id").loc["g0", "w"]
    assert w_case > 0 and control.table.set_index("gene_id").loc["g0", "w"] == pytest.approx(-w_case)


def test_auto_replaces_a_ledoit_wolf_fit_that_fails_its_own_exchangeability_check():
    # AR(1) rho 0.8, n = p = 1,000: Ledoit-Wolf shrinkage 0.22 <= 0.3, so `auto` kept it, and its neighbour check
    # failed (27% of pairs discrepant): the default warned "FDR may not hold" and --strict refused the default
    # configuration, although factor_blocks passes on the same data (1.4%)
    from iml_genomics.select.diagnostics import fit_checked_covariance

    X, _ = _ar1(1000, 1000, 0.8, seed=0)
    lw, lw_check, lw_note = fit_checked_covariance(X, covariance="ledoit_wolf", factor_rank=None, s_method="mvr")
    assert lw.kind == "ledoit_wolf" and lw.shrinkage <= 0.3
    assert lw_check["passed"] is False and lw_note is None  # a forced kind is reported as it is, never replaced
    model, check, note = fit_checked_covariance(X, covariance="auto", factor_rank=None, s_method="mvr")
    assert model.kind == "factor_blocks" and check["covariance_model"] == "factor_blocks" and check["passed"]
    assert "Ledoit-Wolf" in note and "factor_blocks" in note
