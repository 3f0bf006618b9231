"""data.covariates in train and explain (issue 16, item 2).

1. A batch that shifts many genes and the outcome: without covariates the batch-driven genes carry a large
   share of mean |SHAP| and rank near the top; with the batch as a covariate that share drops in every seeded
   cohort, the covariate itself is reported (feature_type covariate) and the planted causal genes stay on top.
2. The bundle records the encoding; explain reads the covariates from the cohort again and refuses, in one
   line with exit 2 and nothing written, a cohort without the column, with a blank value or with a level
   the model never saw; train and select refuse blank or absent covariates the same way.
3. Crafted bundles: a malformed ``covariates`` entry, a model.json without the covariates of its model.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from conftest import TEST_DATA, one_line, run_cli_inprocess
from iml_genomics.config import config_from_dict
from iml_genomics.errors import InputDataError


def confounded(seed: int, n: int = 300, p: int = 120, n_conf: int = 10, n_causal: int = 5):
    """Batch (b1/b2) shifts genes 0..9 by 2 sd and the outcome's log-odds by 5; genes 10..14 are causal."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 2, n)
    X = rng.normal(size=(n, p))
    X[:, :n_conf] += 2.0 * batch[:, None]
    causal = np.arange(n_conf, n_conf + n_causal)
    eta = 5.0 * (batch - 0.5) + 0.8 * X[:, causal].sum(1)
    y = eta + rng.logistic(size=n) > 0
    obs = pd.DataFrame({"y": np.where(y, "case", "ctrl"), "batch": np.where(batch, "b2", "b1")},
                       index=[f"s{i}" for i in range(n)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(p)]))
    return adata, [f"g{j}" for j in range(n_conf)], [f"g{j}" for j in causal]


def _ranking(adata, covariates, seed):
    from iml_genomics.steps import explain, train

    cfg = config_from_dict({"data": {"label_column": "y", "covariates": covariates}, "model": {"name": "l1_logistic"},
                            "explain": {"method": "shap"}, "n_jobs": 1, "seed": seed})
    trained = train(adata, cfg)
    return explain(adata, cfg, model=trained).ranking, trained


def test_batch_covariate_moves_attribution_off_confounded_genes():
    shares, best_conf_rank, causal_top = {False: [], True: []}, {False: [], True: []}, {False: [], True: []}
    for seed in range(4):
        adata, conf, causal = confounded(seed)
        for adjusted in (False, True):
            ranking, _ = _ranking(adata, ["batch"] if adjusted else [], seed)
            score = ranking.set_index("gene_id")["mean_abs_shap"].fillna(0.0)
            shares[adjusted].append(score[conf].sum() / score.sum())
            best_conf_rank[adjusted].append(ranking.set_index("gene_id").loc[conf, "rank"].min())
            genes = ranking[ranking["feature_type"] == "gene"]["gene_id"].head(5)
            causal_top[adjusted].append(len(set(genes) & set(causal)) / 5)
            if adjusted:
                cov = ranking[ranking["feature_type"] == "covariate"]
                # the covariate is reported, never hidden, and the model leans on it
                assert cov["gene_id"].tolist() == ["covariate:batch=b2"] and cov["rank"].iloc[0] <= 3
            else:
                assert (ranking["feature_type"] == "gene").all()
    drop = np.array(shares[False]) - np.array(shares[True])
    # every seeded cohort: less attribution on the batch-driven genes once the batch is a model input
    assert (drop > 0).all() and drop.mean() > 0.05, (shares, drop)
    assert np.mean(best_conf_rank[False]) <= 3 < np.mean(best_conf_rank[True]), best_conf_rank
    # the planted genes stay on top (and are found at least as well as without the covariate)
    assert np.mean(causal_top[True]) >= 0.7 and np.mean(causal_top[True]) >= np.mean(causal_top[False]), causal_top


def test_with_covariates_step_scales_covariates_and_keeps_them_in_the_support():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from iml_genomics.covariates import WithCovariates
    from iml_genomics.preprocess import ExpressionTransform, GeneFilter

    rng = np.random.default_rng(0)
    X = np.hstack([rng.poisson(3.0, size=(50, 6)).astype(float), rng.normal(60, 10, (50, 1)),
                   rng.integers(0, 2, (50, 1))])
    step = WithCovariates(Pipeline([("transform", ExpressionTransform("log1p")), ("filter", GeneFilter(top_k_variable=3)),
                                    ("scale", StandardScaler())]), n_covariates=2).fit(X)
    Z = step.transform(X)
    assert Z.shape == (50, 5)
    # the covariates are standardized apart (never log-transformed or filtered with the genes)
    np.testing.assert_allclose(Z[:, 3:].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z[:, 3], (X[:, 6] - X[:, 6].mean()) / X[:, 6].std())
    mask = step.get_support()
    assert mask.sum() == 5 and mask[-2:].all()
    # sparse input (single cells): the gene part stays sparse, the covariates are appended as columns
    def scale_only():
        return WithCovariates(Pipeline([("transform", ExpressionTransform("log1p")),
                                        ("scale", StandardScaler(with_mean=False))]), n_covariates=2)
    dense_out = scale_only().fit(X).transform(X)
    sparse_out = scale_only().fit(sparse.csr_matrix(X)).transform(sparse.csr_matrix(X))
    assert sparse.issparse(sparse_out)
    np.testing.assert_allclose(sparse_out.toarray(), dense_out)


def test_encoding_refuses_blank_constant_and_unseen_values():
    from iml_genomics.covariates import apply_encoding, fit_encoding

    obs = pd.DataFrame({"batch": ["a", "b", "a", "c"], "age": ["50", "61.5", "40", "70"], "one": ["x"] * 4},
                       index=["s1", "s2", "s3", "s4"])
    enc = fit_encoding(obs, ["batch", "age"], source="labels.tsv")
    assert enc[0]["features"] == ["covariate:batch=b", "covariate:batch=c"] and enc[1]["kind"] == "numeric"
    Z = apply_encoding(obs, enc, source="labels.tsv")
    np.testing.assert_array_equal(Z, [[0, 0, 50], [1, 0, 61.5], [0, 0, 40], [0, 1, 70]])
    with pytest.raises(InputDataError, match="'one'.*same value"):
        fit_encoding(obs, ["one"], source="labels.tsv")
    blank = obs.assign(batch=["a", " ", "a", "c"])
    with pytest.raises(InputDataError, match=r"'batch'.*empty for 1 sample\(s\) \(first: 's2'\)"):
        apply_encoding(blank, enc, source="labels.tsv")
    with pytest.raises(InputDataError, match="level 'z'.*'s4'"):
        apply_encoding(obs.assign(batch=["a", "b", "a", "z"]), enc, source="labels.tsv")
    with pytest.raises(InputDataError, match="'age' was numeric.*'s1'"):
        apply_encoding(obs.assign(age=["old", "1", "2", "3"]), enc, source="labels.tsv")
    with pytest.raises(InputDataError, match="covariate column 'batch' .*not found"):
        apply_encoding(obs.drop(columns="batch"), enc, source="labels.tsv")
    with pytest.raises(InputDataError, match="name of a gene"):
        fit_encoding(obs, ["age"], source="labels.tsv", gene_ids=["covariate:age"])


# --- the CLI: one trained bundle with covariates, then bad cohorts ---------------------------------------

@pytest.fixture(scope="module")
def cov_bundle(tmp_path_factory):
    base = tmp_path_factory.mktemp("cov")
    labels = pd.read_csv(TEST_DATA / "demo_labels.tsv", sep="\t", dtype=str)
    rng = np.random.default_rng(1)
    labels["batch"] = rng.choice(["b1", "b2", "b3"], len(labels))
    labels["age"] = rng.normal(60, 10, len(labels)).round(1).astype(str)
    labels.to_csv(base / "labels.tsv", sep="\t", index=False)
    (base / "cfg.yaml").write_text("data:\n  label_column: condition\n  covariates: [batch, age]\n"
                                   "model: {name: l1_logistic, params: {C: 0.3}}\nexplain: {method: shap}\n")
    run_cli_inprocess("train", "--config", base / "cfg.yaml", "--expression", TEST_DATA / "demo_expression.csv.gz",
                      "--labels", base / "labels.tsv", "--out", base / "train", "--jobs", "1")
    return base, labels


def _explain(base, labels_path, out, *extra):
    return run_cli_inprocess("explain", "--model", base / "train", "--expression", TEST_DATA / "demo_expression.csv.gz",
                             "--labels", labels_path, "--out", out, "--jobs", "1", *extra, check=False)


def test_bundle_records_covariates_and_explain_reports_them(cov_bundle):
    base, _ = cov_bundle
    manifest = json.loads((base / "train" / "model.json").read_text())
    assert [e["column"] for e in manifest["covariates"]] == ["batch", "age"]
    assert manifest["covariates"][0]["levels"] == ["b1", "b2", "b3"]
    proc = _explain(base, base / "labels.tsv", base / "explain")
    assert proc.returncode == 0, proc.stderr
    ranking = pd.read_csv(base / "explain" / "gene_ranking.tsv", sep="\t")
    cov = ranking[ranking["feature_type"] == "covariate"]
    assert sorted(cov["gene_id"]) == ["covariate:age", "covariate:batch=b2", "covariate:batch=b3"]
    assert (ranking["feature_type"] == "gene").sum() == 400
    summary = json.loads((base / "explain" / "explain_summary.json").read_text())
    assert summary["covariates"]["columns"] == ["batch", "age"]


@pytest.mark.parametrize("change, needles", [
    (lambda t: t.drop(columns="batch"), ("covariate column 'batch'", "not found")),
    (lambda t: t.assign(batch=[""] + list(t["batch"][1:])), ("covariate column 'batch'", "S0001")),
    (lambda t: t.assign(batch=["b9"] + list(t["batch"][1:])), ("level 'b9'", "S0001")),
])
def test_explain_refuses_a_cohort_without_usable_covariates(cov_bundle, tmp_path, change, needles):
    base, labels = cov_bundle
    change(labels).to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    proc = _explain(base, tmp_path / "labels.tsv", tmp_path / "out")
    one_line(proc, 2, *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("step", ["train", "select"])
@pytest.mark.parametrize("key, column, blank", [("covariates", "batch", True), ("covariates", "nosuch", False),
                                                  ("sensitive", "sex", True), ("sensitive", "nosuch", False)])
def test_train_and_select_refuse_absent_or_blank_columns(cov_bundle, tmp_path, step, key, column, blank):
    base, labels = cov_bundle
    table = labels.assign(sex=np.where(np.arange(len(labels)) % 2, "F", "M"))
    if blank:
        table.loc[5, column] = "NA"
    table.to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    (tmp_path / "c.yaml").write_text(f"data:\n  label_column: condition\n  {key}: [{column}]\n")
    proc = run_cli_inprocess(step, "--config", tmp_path / "c.yaml", "--expression",
                             TEST_DATA / "demo_expression.csv.gz",
                             "--labels", tmp_path / "labels.tsv", "--out", tmp_path / "out", check=False)
    line = one_line(proc, 2, f"'{column}'", f"data.{key}")
    if blank:
        assert table.iloc[5]["sample_id"] in line
    assert not (tmp_path / "out").exists()


def test_crafted_covariate_bundles_are_refused(cov_bundle, tmp_path):
    import shutil

    base, _ = cov_bundle
    for name, edit in (("malformed", lambda m: m["covariates"][0].update(levels="b1")),
                       ("dropped", lambda m: m.pop("covariates"))):
        bundle = tmp_path / name
        shutil.copytree(base / "train", bundle)
        manifest = json.loads((bundle / "model.json").read_text())
        edit(manifest)
        (bundle / "model.json").write_text(json.dumps(manifest))
        proc = run_cli_inprocess("explain", "--model", bundle, "--expression", TEST_DATA / "demo_expression.csv.gz",
                                 "--labels", base / "labels.tsv", "--out", tmp_path / f"out_{name}", check=False)
        one_line(proc, 2, "model")
        assert not (tmp_path / f"out_{name}").exists()


def test_loaded_covariate_pipeline_is_checked_inside(cov_bundle):
    """The gene preprocessing inside WithCovariates is held to the same allow-list as a top-level step."""
    from sklearn.pipeline import Pipeline

    from iml_genomics.errors import BundleError
    from iml_genomics.models import _check_loaded, load_bundle

    base, _ = cov_bundle
    pipeline, manifest = load_bundle(base / "train")
    _check_loaded(pipeline, manifest, "bundle")  # the real one passes
    step = pipeline.steps[0][1]
    good = step.genes_
    for bad in (Pipeline([("nested", Pipeline(good.steps))]), Pipeline(good.steps, memory="/tmp/cache"), "genes"):
        step.genes_ = bad
        with pytest.raises(BundleError, match="re-train"):
            _check_loaded(pipeline, manifest, "bundle")
    step.genes_ = good
