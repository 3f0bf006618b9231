"""Model bundles from other people: nothing in them runs, every refusal is one line.

The crafted bundles are real skops zips: a genuine bundle whose
``schema.json`` is edited and whose ``model.json`` sha256 is recomputed (what
anyone who can edit the bundle can do). Payloads touch a marker file; the
tests first show the payload is live (skops itself runs it when told to
trust the name) and then that ``explain --model`` / ``evaluate --model``
refuse the bundle with exit 2, one stderr line naming the file and the
offending type, nothing written and no marker.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_SAMPLES, N_GENES = 24, 6
GENES = [f"G{j}" for j in range(N_GENES)]


# ---------------------------------------------------------------------------
# Helpers: a genuine bundle, schema nodes, the rewrite an attacker makes
# ---------------------------------------------------------------------------


def _cohort(task: str = "classification", n_classes: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.gamma(2.0, 2.0, size=(N_SAMPLES, N_GENES))
    if task == "regression":
        y = X[:, 0] + rng.normal(size=N_SAMPLES)
    else:
        y = np.array([chr(ord("a") + i % n_classes) for i in range(N_SAMPLES)], dtype=object)
        X[y == "b", 0] += 3.0
    return X, y


def make_bundle(directory: Path, name: str = "l1_logistic", task: str = "classification", n_classes: int = 2,
                params: dict | None = None, preprocess: dict | None = None) -> tuple[Path, object, np.ndarray]:
    """Fit and save a real registry model as ``train`` does (same manifest fields)."""
    from iml_genomics.config import config_from_dict
    from iml_genomics.models import build_pipeline, save_bundle

    X, y = _cohort(task, n_classes)
    cfg = config_from_dict({"model": {"name": name, "params": params or {}}, "preprocess": preprocess or {},
                            "data": {"label_column": "condition"}})
    classes = sorted(set(y)) if task == "classification" else None
    pipeline = build_pipeline(cfg, task, n_classes=len(classes) if classes else None).fit(X, y)
    directory.mkdir(parents=True, exist_ok=True)
    save_bundle(directory, pipeline, {"task": task, "classes": classes, "gene_ids": GENES, "used_genes": GENES,
                                      "label_column": "condition", "model_name": name,
                                      "config": {k: v for k, v in cfg.to_dict().items() if k != "n_jobs"}})
    return directory, pipeline, X


def js(value) -> dict:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True}


def tup(items: list) -> dict:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": items}


def lst(items: list) -> dict:
    return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": items}


def shell_args(marker: Path) -> dict:
    return lst([js("sh"), js("-c"), js(f"touch {marker}")])


def rewrite(directory: Path, mutate=None, *, schema_text: str | None = None, extra_members=()) -> bytes:
    """Edit the bundle's schema.json and re-sign model.json, as an attacker would."""
    model = directory / "model.skops"
    src = zipfile.ZipFile(io.BytesIO(model.read_bytes()))
    schema = json.loads(src.read("schema.json"))
    if mutate is not None:
        mutate(schema)
    text = schema_text if schema_text is not None else json.dumps(schema)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, text if info.filename == "schema.json" else src.read(info.filename))
        for name, payload in extra_members:
            dst.writestr(name, payload)
    data = buf.getvalue()
    model.write_bytes(data)
    manifest = json.loads((directory / "model.json").read_text())
    manifest["model_sha256"] = hashlib.sha256(data).hexdigest()
    (directory / "model.json").write_text(json.dumps(manifest))
    return data


def add_attribute(schema: dict, key: str, node: dict) -> None:
    """Add ``key: node`` to the pipeline's attribute dict (with its key type, so skops builds it)."""
    attrs = schema["content"]
    attrs["content"][key] = node
    attrs["key_types"]["content"].append({"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode"})


def final_estimator_attrs(schema: dict) -> dict:
    steps = schema["content"]["content"]["steps"]["content"]
    return steps[-1]["content"][1]["content"]


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "iml_genomics", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def assert_refused(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> str:
    """Exit 2, exactly one stderr line holding every needle, no traceback, nothing written."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]}"
    assert len(lines[0]) < 1200, len(lines[0])
    assert not out.exists()
    return lines[0]


def assert_load_refused(bundle: Path, *needles: str) -> str:
    """load_bundle raises a one-line BundleError holding every needle (the in-process twin of the CLI check)."""
    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    with pytest.raises(BundleError) as err:
        load_bundle(bundle)
    message = str(err.value)
    assert "\n" not in message and len(message) < 1200, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message}"
    return message


@pytest.fixture
def case(tmp_path):
    """A genuine bundle and an expression file, plus the explain command on them."""
    bundle, _, X = make_bundle(tmp_path / "bundle")
    expr = pd.DataFrame(X, index=pd.Index([f"S{i:02d}" for i in range(N_SAMPLES)], name="sample_id"), columns=GENES)
    expr.to_csv(tmp_path / "expr.csv")
    out = tmp_path / "out"

    def explain():
        return run_cli("explain", "--model", bundle, "--expression", tmp_path / "expr.csv", "--out", out,
                       "--jobs", "1", "--method", "shap", cwd=tmp_path)

    return {"dir": tmp_path, "bundle": bundle, "out": out, "explain": explain, "marker": tmp_path / "PAYLOAD_RAN"}


# ---------------------------------------------------------------------------
# Code execution attempts, through the real CLI
# ---------------------------------------------------------------------------


def test_reexported_function_trick_is_live_in_skops_but_refused_by_explain(case):
    """``sklearn.utils._testing.check_output`` is ``subprocess.check_output``: a prefix rule runs it."""
    import skops.io as sio

    marker = case["marker"]
    payload = {"__class__": "check_output", "__module__": "sklearn.utils._testing",
               "__loader__": "ConstructorFromReduceNode", "content": tup([shell_args(marker)])}
    data = rewrite(case["bundle"], lambda s: add_attribute(s, "x_", payload))
    # the payload is real: trusting its name (what a prefix rule does) runs the shell command
    sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert marker.exists()
    marker.unlink()

    proc = case["explain"]()
    assert_refused(proc, case["out"], "model.skops", "sklearn.utils._testing.check_output", "refusing")
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["ObjectNode", "NdArrayNode", "DictNode", "LossNode", "TreeNode"])
def test_function_names_under_every_calling_loader_refused(case, loader):
    """A function named where a class is expected (skops would call it on load) is refused by name."""
    marker = case["marker"]
    node = {"__class__": "check_output", "__module__": "sklearn.utils._testing", "__loader__": loader}
    if loader == "NdArrayNode":
        node |= {"type": "json", "content": [js("sh")], "shape": tup([js(1)])}
    elif loader == "DictNode":
        node |= {"content": {}, "key_types": lst([])}
    elif loader in ("LossNode", "TreeNode"):
        node |= {"__reduce__": {"args": tup([shell_args(marker)])}, "content": {"__class__": "dict",
                 "__module__": "builtins", "__loader__": "DictNode", "content": {}, "key_types": lst([])}}
    rewrite(case["bundle"], lambda s: add_attribute(s, "x_", node))
    assert_load_refused(case["bundle"], "model.skops", "sklearn.utils._testing.check_output", loader)
    assert not marker.exists()


@pytest.mark.parametrize("module", ["os", "posix"])
def test_reduce_node_calling_system_refused(case, module):
    marker = case["marker"]
    payload = {"__class__": "system", "__module__": module, "__loader__": "ConstructorFromReduceNode",
               "content": tup([js(f"touch {marker}")])}
    rewrite(case["bundle"], lambda s: add_attribute(s, "x_", payload))
    if module == "posix":
        assert_refused(case["explain"](), case["out"], "model.skops", "posix.system", "reduce call")
    else:
        assert_load_refused(case["bundle"], "model.skops", "os.system", "reduce call")
    assert not marker.exists()


def test_dict_key_type_that_is_a_function_refused(case):
    """skops rebuilds dict keys by calling their stored type: a function there would run."""
    def mutate(schema):
        attrs = schema["content"]
        attrs["content"][f"touch {case['marker']}"] = js(1)
        attrs["key_types"]["content"].append({"__class__": "system", "__module__": "posix", "__loader__": "TypeNode"})

    rewrite(case["bundle"], mutate)
    assert_load_refused(case["bundle"], "posix.system", "a type or builtin function")
    assert not case["marker"].exists()


@pytest.mark.parametrize("func", ["system", "eval"])
def test_function_transformer_of_a_builtin_refused(case, func):
    """A genuine skops dump of FunctionTransformer(builtin) in the pipeline: refused, never called."""
    import builtins

    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from iml_genomics.models import load_bundle

    bundle = case["bundle"]
    pipeline, _ = load_bundle(bundle)
    target = os.system if func == "system" else builtins.eval
    evil = Pipeline([("run", FunctionTransformer(func=target, validate=False)), *pipeline.steps])
    data = sio.dumps(evil)
    (bundle / "model.skops").write_bytes(data)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["model_sha256"] = hashlib.sha256(data).hexdigest()
    (bundle / "model.json").write_text(json.dumps(manifest))
    expected = "posix.system" if func == "system" else "builtins.eval"
    if func == "system":
        assert_refused(case["explain"](), case["out"], "model.skops", "FunctionTransformer", expected)
    else:
        assert_load_refused(bundle, "model.skops", "FunctionTransformer", expected)


@pytest.mark.parametrize("loader", ["FunctionNode", "MethodNode", "PartialNode", "OperatorFuncNode"])
def test_callable_loaders_refused_even_with_sklearn_names(case, loader):
    node = {"__class__": "LogisticRegression", "__module__": "sklearn.linear_model._logistic", "__loader__": loader}
    rewrite(case["bundle"], lambda s: add_attribute(s, "x_", node))
    assert_load_refused(case["bundle"], "model.skops", "sklearn.linear_model._logistic.LogisticRegression")


def test_evaluate_model_refuses_crafted_bundle(case):
    d = case["dir"]
    marker = case["marker"]
    payload = {"__class__": "check_output", "__module__": "sklearn.utils._testing",
               "__loader__": "ConstructorFromReduceNode", "content": tup([shell_args(marker)])}
    rewrite(case["bundle"], lambda s: add_attribute(s, "x_", payload))
    (d / "truth.txt").write_text("G0\n")
    pd.DataFrame({"gene_id": GENES, "rank": range(1, N_GENES + 1)}).to_csv(d / "ranking.tsv", sep="\t", index=False)
    labels = pd.DataFrame({"sample_id": [f"S{i:02d}" for i in range(N_SAMPLES)],
                           "condition": ["a", "b"] * (N_SAMPLES // 2)})
    labels.to_csv(d / "labels.tsv", sep="\t", index=False)
    proc = run_cli("evaluate", "--truth", d / "truth.txt", "--ranking", d / "ranking.tsv", "--expression",
                   d / "expr.csv", "--labels", d / "labels.tsv", "--model", case["bundle"], "--out", case["out"],
                   cwd=d)
    assert_refused(proc, case["out"], "model.skops", "sklearn.utils._testing.check_output")
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Malformed manifests and models with trusted types but hostile content
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("edit, needle", [
    (lambda m: [m], "must be a JSON object, got a list"),
    (lambda m: {k: v for k, v in m.items() if k != "gene_ids"}, "'gene_ids' is missing"),
    (lambda m: {**m, "gene_ids": [1, 2, 3, 4, 5, 6]}, "'gene_ids' must be a non-empty list of strings"),
    (lambda m: {**m, "gene_ids": ["G0"] * 6}, "'gene_ids' repeats"),
    (lambda m: {**m, "task": "x" * 10_000}, "'task' must be"),
    (lambda m: {**m, "classes": None}, "'classes' must list two or more"),
    (lambda m: {**m, "config": "yes"}, "'config' must be a JSON object"),
])
def test_malformed_manifest_refused(case, edit, needle):
    path = case["bundle"] / "model.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    line = assert_load_refused(case["bundle"], "model.json", needle)
    assert len(line) < 600  # the 10,000-character task is not echoed whole


@pytest.mark.parametrize("edit, needle", [
    (lambda m: [m], "must be a JSON object, got a list"),
    (lambda m: {k: v for k, v in m.items() if k != "gene_ids"}, "'gene_ids' is missing"),
])
def test_malformed_manifest_refused_by_explain(case, edit, needle):
    path = case["bundle"] / "model.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    assert_refused(case["explain"](), case["out"], "model.json", needle)


def test_manifest_gene_count_must_match_model(case):
    path = case["bundle"] / "model.json"
    manifest = json.loads(path.read_text())
    manifest["gene_ids"] = manifest["used_genes"] = GENES[:-1]
    path.write_text(json.dumps(manifest))
    assert_load_refused(case["bundle"], "model.skops", "expects 6 genes", "lists 5")


def test_changed_model_without_new_sha256_is_refused(case):
    """The sha256 catches accidental damage (a flipped byte); it is not what stops tampering."""
    model = case["bundle"] / "model.skops"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    assert_load_refused(case["bundle"], "model.skops", "sha256")


def _tree_bundle(tmp_path):
    bundle, _, X = make_bundle(tmp_path / "tree_bundle", name="decision_tree")
    return bundle, X


def _tree_nodes_file(bundle: Path) -> tuple[str, np.ndarray]:
    """The .npy member holding the fitted tree's node array."""
    src = zipfile.ZipFile(io.BytesIO((bundle / "model.skops").read_bytes()))
    for name in src.namelist():
        if name.endswith(".npy"):
            arr = np.load(io.BytesIO(src.read(name)), allow_pickle=False)
            if arr.dtype.names and "left_child" in arr.dtype.names:
                return name, arr
    raise AssertionError("no node array")


@pytest.mark.parametrize("damage, needle", [
    ("child", "child index out of range"),
    ("feature", "feature out of range"),
    ("depth", "max_depth"),
])
def test_tree_with_out_of_range_indices_refused(tmp_path, damage, needle):
    """Only trusted types, but node indices scikit-learn would follow without bounds checks."""
    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    bundle, _ = _tree_bundle(tmp_path)
    name, nodes = _tree_nodes_file(bundle)
    nodes = nodes.copy()
    inner = np.flatnonzero(nodes["left_child"] != -1)[0]
    if damage == "child":
        nodes["left_child"][inner] = 10**6
    elif damage == "feature":
        nodes["feature"][inner] = 10**6

    def mutate(schema):
        if damage == "depth":
            stack = [schema]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    if node.get("__loader__") == "TreeNode":
                        node["content"]["content"]["max_depth"] = js(10**6)
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)

    buf = io.BytesIO()
    np.save(buf, nodes, allow_pickle=False)
    src = zipfile.ZipFile(io.BytesIO((bundle / "model.skops").read_bytes()))
    members = {n: src.read(n) for n in src.namelist()}
    members[name] = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for n, payload in members.items():
            dst.writestr(n, payload)
    (bundle / "model.skops").write_bytes(out.getvalue())
    rewrite(bundle, mutate)
    with pytest.raises(BundleError, match=needle):
        load_bundle(bundle)


def test_zip_bomb_member_refused(case):
    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    rewrite(case["bundle"], extra_members=[("bomb.npy", b"\0" * (40 * 2**20))])
    with pytest.raises(BundleError, match="bomb.npy would decompress"):
        load_bundle(case["bundle"])


def test_zip_bomb_spread_over_many_members_refused(case):
    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    rewrite(case["bundle"], extra_members=[(f"part{i}.npy", b"\0" * (15 * 2**20)) for i in range(5)])
    with pytest.raises(BundleError, match="members would decompress"):
        load_bundle(case["bundle"])


def test_deeply_nested_schema_is_one_line(case):
    deep = '{"a": ' * 200_000 + "1" + "}" * 200_000
    rewrite(case["bundle"], schema_text=deep)
    assert_refused(case["explain"](), case["out"], "model.skops", "schema.json")


def test_other_skops_protocol_refused(case):
    rewrite(case["bundle"], lambda s: s.update(protocol=1))
    assert_load_refused(case["bundle"], "model.skops", "protocol")


def test_pipeline_cache_directory_refused(case, tmp_path):
    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    rewrite(case["bundle"], lambda s: s["content"]["content"].update(memory=js(str(tmp_path / "cache"))))
    with pytest.raises(BundleError, match="cache directory"):
        load_bundle(case["bundle"])


# ---------------------------------------------------------------------------
# Every real model still loads; the allow-list holds only classes
# ---------------------------------------------------------------------------


def _registry_cases():
    from iml_genomics.models import MODEL_REGISTRY

    small = {"random_forest": {"n_estimators": 3}, "extra_trees": {"n_estimators": 3},
             "gradient_boosting": {"n_estimators": 3}}
    for name in MODEL_REGISTRY:
        for task, n_classes in (("classification", 2), ("classification", 3), ("regression", None)):
            yield name, task, n_classes, small.get(name, {})
    for loss in ("absolute_error", "huber", "quantile"):
        yield "gradient_boosting", "regression", None, {"n_estimators": 3, "loss": loss}
    yield "gradient_boosting", "classification", 2, {"n_estimators": 3, "loss": "exponential"}


def test_every_registry_model_round_trips(tmp_path):
    from iml_genomics.models import load_bundle, predict_scores

    for k, (name, task, n_classes, params) in enumerate(_registry_cases()):
        pre = {"top_k_variable": 4, "min_expression": 0.5, "transform": "log1p"} if k % 2 else {}
        directory, pipeline, X = make_bundle(tmp_path / f"b{k}", name, task, n_classes or 2, params, pre)
        loaded, manifest = load_bundle(directory)
        classes = manifest["classes"]
        np.testing.assert_array_equal(predict_scores(loaded, X, classes), predict_scores(pipeline, X, classes),
                                      err_msg=f"{name} {task} {n_classes} {params}")


def test_allow_list_holds_only_classes_that_resolve_to_themselves():
    import importlib

    from iml_genomics.bundle_audit import allowed_types

    table = allowed_types()
    assert "sklearn.utils._testing.check_output" not in {n for names in table.values() for n in names}
    for loader, names in table.items():
        for name, cls in names.items():
            assert isinstance(cls, type), (loader, name)
            module, _, attr = name.rpartition(".")
            assert getattr(importlib.import_module(module), attr) is cls


@pytest.mark.parametrize("content, needle", [("[1, 2]", "must be a JSON object, got a list"),
                                             ('{"gene_ids": 5}', "'gene_ids' must be a list of strings")])
def test_report_reads_a_malformed_model_json_as_one_error(tmp_path, content, needle):
    """``report --inputs train/`` reads model.json too (without loading the model)."""
    from iml_genomics.errors import InputDataError
    from iml_genomics.report.inputs import load_inputs

    train = tmp_path / "train"
    train.mkdir()
    (train / "model.json").write_text(content)
    with pytest.raises(InputDataError, match=needle) as err:
        load_inputs([train])
    assert "model.json" in str(err.value)


def test_pipeline_of_allowed_classes_in_the_wrong_shape_refused(case):
    """Only allowed classes, but the final step is a scaler: not a pipeline iml-genomics writes."""
    def mutate(schema):
        steps = schema["content"]["content"]["steps"]["content"]
        steps[:] = steps[:-1]  # drop the model: the scaler becomes the final step

    rewrite(case["bundle"], mutate)
    assert_load_refused(case["bundle"], "model.skops", "not preprocessing followed by a registry model")


def test_pipeline_missing_its_attributes_is_one_line(case):
    """A Pipeline object with no attributes at all (allowed class, empty state)."""
    rewrite(case["bundle"], lambda s: s.pop("content"))
    assert_load_refused(case["bundle"], "model.skops", "malformed model")


def test_random_schema_mutations_load_or_refuse_in_one_line(tmp_path):
    """Seeded fuzzing of a tree bundle's schema: never any exception but a one-line BundleError."""
    import copy
    import random
    import shutil
    import warnings

    from iml_genomics.errors import BundleError
    from iml_genomics.models import load_bundle

    base, _, _ = make_bundle(tmp_path / "base", name="decision_tree")
    rng = random.Random(0)
    values = [None, 0, -1, 10**9, 1.5, "x", [], {}, "builtins", "str", "ObjectNode", "numpy", True]

    def all_dicts(x, out):
        if isinstance(x, dict):
            out.append(x)
            for v in x.values():
                all_dicts(v, out)
        elif isinstance(x, list):
            for v in x:
                all_dicts(v, out)
        return out

    def mutate(schema):
        found = all_dicts(schema, [])
        for _ in range(rng.randint(1, 3)):
            node = rng.choice(found)
            if not node:
                continue
            key = rng.choice(list(node))
            roll = rng.random()
            if roll < 0.3:
                del node[key]
            elif roll < 0.8:
                node[key] = rng.choice(values)
            else:
                other = rng.choice(found)
                node[key] = 1 if other is schema else copy.deepcopy(other)

    outcomes = {"loaded": 0, "refused": 0}
    for k in range(80):
        d = tmp_path / f"m{k}"
        shutil.copytree(base, d)
        rewrite(d, mutate)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a dropped _sklearn_version only warns
                load_bundle(d)
            outcomes["loaded"] += 1
        except BundleError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        shutil.rmtree(d)
    assert outcomes["refused"] > 40, outcomes  # most mutations break something, and are caught


@pytest.mark.parametrize("edit, error, needle", [
    (lambda c: c["model"].update(name="random_forest"), "BundleError", "holds a LogisticRegression"),
    (lambda c: c["model"].update(params={"C": "x" * 5000}), "BundleError", "config.model.params rejected"),
    (lambda c: c["select"].update(fdr=float("nan")), "ConfigError", "select.fdr"),
])
def test_manifest_config_must_be_valid_and_match_the_model(case, edit, error, needle):
    """explain and evaluate refit the manifest's config: it is checked when the bundle is loaded."""
    from iml_genomics import errors
    from iml_genomics.models import load_bundle

    path = case["bundle"] / "model.json"
    manifest = json.loads(path.read_text())
    edit(manifest["config"])
    path.write_text(json.dumps(manifest))
    with pytest.raises(getattr(errors, error)) as err:
        load_bundle(case["bundle"])
    message = str(err.value)
    assert "model.json" in message and needle in message and len(message) < 700 and "\n" not in message


def test_other_sklearn_version_is_one_warning_line_not_a_paragraph(case, caplog):
    """A bundle that says it was pickled by another scikit-learn loads, with one warning line naming both."""
    import logging

    from iml_genomics.models import load_bundle

    rewrite(case["bundle"], lambda schema: add_attribute(final_estimator_attrs(schema) | {"content": None} and
                                                         schema["content"]["content"]["steps"]["content"][-1]
                                                         ["content"][1], "_sklearn_version", js("0.24.2")))
    with caplog.at_level(logging.WARNING, logger="iml_genomics.models"):
        load_bundle(case["bundle"])
    lines = [r.getMessage() for r in caplog.records if "scikit-learn" in r.getMessage()]
    assert len(lines) == 1 and "0.24.2" in lines[0] and "\n" not in lines[0], lines
    proc = case["explain"]()
    assert proc.returncode == 0, proc.stderr
    assert "InconsistentVersionWarning" not in proc.stderr and "Traceback" not in proc.stderr
    assert sum("0.24.2" in line for line in proc.stderr.splitlines()) == 1, proc.stderr
