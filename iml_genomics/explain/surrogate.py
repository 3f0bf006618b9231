"""Global surrogate: a shallow decision tree and a short rule list that mimic the model (method ``surrogate``).

The surrogate is fitted to the model's **out-of-fold** predictions (the bundle's pipeline refit on the first
repeat of the step's CV folds, each sample predicted by the refit that did not see it), on the **raw
expression** of the genes the model uses (the pipeline's input, before its transform, filter and scaling), so
its thresholds read in the units of the user's matrix. It is evaluated by CV over those predictions (nested:
each fold's surrogate is fitted on the other folds' samples and scored on the held-out ones):

- fidelity: agreement of the surrogate with the model's prediction (classes) or R^2 against it (regression);
- accuracy: agreement with the true labels (or R^2 against the true values), for comparison with the model's.

Without labels the surrogate mimics the final model's in-sample predictions; fidelity is still held-out (a
seeded K-fold over the samples) and accuracy is skipped.

The rule list is a greedy decision list built from the surrogate tree's paths (see :func:`greedy_rule_list`). We
write it ourselves rather than depend on ``imodels``: its rule lists are for classification only, fitted to
labels through their own trees, and bring mlxtend/requests/tqdm; a decision list over the tree's own paths is a
few lines, covers regression, and is exactly reproducible from the rules text.

When the model itself is a decision tree (``model.name: decision_tree``), its own rules are exported the same way
(``model_rules.txt``, rows ``source = model_tree`` in ``surrogate.tsv``): they *are* the model, and their
fidelity (agreement of the written rules with the model's predictions on the cohort) is measured, not assumed.

Thresholds are written with the fewest significant digits that split the (training) samples exactly as the
fitted tree does, and the text is what is evaluated: :func:`parse_rules` and :func:`apply_rules` read it back.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from iml_genomics.explain.methods import MethodContext, MethodOutput, class_codes

SURROGATE_COLUMNS = ["source", "row_type", "rule_id", "rule", "prediction", "n_samples", "fidelity", "accuracy",
                     "evaluated_on", "explains"]


# ---------------------------------------------------------------------------------------------------------------
# Rules: a tree flattened to (conditions, prediction); text in and out
# ---------------------------------------------------------------------------------------------------------------

def _nice_threshold(t: float, values32: np.ndarray) -> float:
    """The shortest decimal r with ``{v <= r} == {v <= t}`` on ``values32`` (sklearn compares float32 inputs)."""
    v = values32.astype(np.float64)
    below = v[v <= t]
    above = v[v > t]
    lo = below.max() if below.size else -np.inf
    hi = above.min() if above.size else np.inf
    for digits in range(1, 18):
        r = float(f"{t:.{digits}g}")
        if lo <= r < hi:
            return r
    return float(t)


def _short(value: float) -> float:
    """A surrogate's predicted value to 6 significant digits: readable, and the value its rules then predict."""
    return float(f"{value:.6g}")


def tree_rules(tree, *, gene_names: list, classes=None, thresholds: np.ndarray | None = None,
               short_values: bool = False) -> tuple:
    """A fitted sklearn decision tree as rules.

    Parameters
    ----------
    tree : DecisionTreeClassifier or DecisionTreeRegressor (fitted)
    gene_names : list of str
        Name of each column of the tree's input.
    classes : list or None
        Classification: the name of each class code (the values of ``tree.classes_``); None for regression.
    thresholds : ndarray, optional
        Threshold of each node to write (rounded, or mapped to another scale); the tree's own when None.
    short_values : bool
        Regression: predict the leaf values to 6 significant digits (the surrogate; a model's own tree keeps its).

    Returns
    -------
    (leaves, nodes)
        ``leaves``: one dict per leaf in depth-first order, ``conditions`` (list of (gene, op, threshold), one
        bound per gene and direction), ``prediction`` (class name or float), ``node`` (leaf id).
        ``nodes``: node id -> conditions of its path, for every node but the root.
    """
    t = tree.tree_
    thresholds = t.threshold if thresholds is None else thresholds
    leaves, nodes = [], {}

    def walk(node, conds):
        if node:
            nodes[node] = _simplify(conds)
        if t.children_left[node] == -1:
            value = t.value[node]
            if classes is None:
                pred = _short(float(value[0, 0])) if short_values else float(value[0, 0])
            else:
                label = tree.classes_[int(np.argmax(value[0]))]
                # a surrogate is fitted on class codes, the model's tree on class names
                pred = classes[int(label)] if isinstance(label, (int, float, np.number)) else str(label)
            leaves.append({"conditions": _simplify(conds), "prediction": pred, "node": int(node)})
            return
        g = gene_names[t.feature[node]]
        thr = float(thresholds[node])
        walk(t.children_left[node], conds + [(g, "<=", thr)])
        walk(t.children_right[node], conds + [(g, ">", thr)])

    walk(0, [])
    return leaves, nodes


def rounded_thresholds(tree, X: np.ndarray) -> np.ndarray:
    """The tree's thresholds rounded to the fewest digits that keep the partition of the rows of ``X``."""
    t = tree.tree_
    X32 = np.asarray(X, dtype=np.float32)
    out = t.threshold.copy()
    for node in np.flatnonzero(t.children_left != -1):
        out[node] = _nice_threshold(float(t.threshold[node]), X32[:, t.feature[node]])
    return out


def _simplify(conds: list) -> list:
    """One bound per gene and direction (the tightest), in the order genes first appear on the path."""
    best: dict = {}
    for g, op, thr in conds:
        key = (g, op)
        if key not in best:
            best[key] = thr
        else:
            best[key] = min(best[key], thr) if op == "<=" else max(best[key], thr)
    return [(g, op, best[(g, op)]) for (g, op) in best]


def _quote(gene: str) -> str:
    # ids with whitespace or a backtick are written in backticks, a backtick inside doubled (as SQL quotes
    # identifiers), so that ``a` b`` reads back as one gene id, not as a broken condition
    if not gene or re.search(r"\s|`", gene):
        return "`" + gene.replace("`", "``") + "`"
    return gene


def _unquote(token: str) -> str:
    return token[1:-1].replace("``", "`") if token.startswith("`") else token


def condition_text(conditions: list) -> str:
    """``GENE <= 1.5 AND OTHER > 2`` (``TRUE`` for no condition)."""
    if not conditions:
        return "TRUE"
    return " AND ".join(f"{_quote(g)} {op} {thr!r}" for g, op, thr in conditions)


def _then(prediction, classes) -> str:
    return f"class = {prediction}" if classes is not None else f"value = {float(prediction)!r}"


_COND = re.compile(r"(`(?:[^`]|``)*`|\S+) (<=|>) (\S+)(?: AND |$)")


def _parse_conditions(text: str) -> list:
    if text == "TRUE":
        return []
    conds, pos = [], 0
    for m in _COND.finditer(text):
        if m.start() != pos:
            raise ValueError(f"cannot parse condition {text!r}")
        g = m.group(1)
        conds.append((_unquote(g), m.group(2), float(m.group(3))))
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"cannot parse condition {text!r}")
    return conds


def parse_rules(text: str) -> dict:
    """Read rules written by this module back: section name -> list of (conditions, kind, prediction).

    Sections start with ``[name]``; lines starting with ``#`` are comments. ``kind`` is ``IF`` (tree leaves,
    disjoint), ``ELSE IF`` / ``ELSE`` (decision list, first match wins). ``prediction`` is a class name (str) or
    a float (``value = ...``).
    """
    sections: dict = {}
    current = None
    line_re = re.compile(r"^(IF|ELSE IF) (.*) THEN (class|value) = (.*)$")
    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections[current] = []
            continue
        if current is None:
            raise ValueError(f"rule outside a section: {line!r}")
        m = line_re.match(line)
        if m:
            pred = m.group(4) if m.group(3) == "class" else float(m.group(4))
            sections[current].append((_parse_conditions(m.group(2)), m.group(1), pred))
            continue
        m = re.match(r"^ELSE THEN (class|value) = (.*)$", line)
        if m:
            pred = m.group(2) if m.group(1) == "class" else float(m.group(2))
            sections[current].append(([], "ELSE", pred))
            continue
        raise ValueError(f"cannot parse rule line {line!r}")
    return sections


def covers(conditions: list, frame: pd.DataFrame) -> np.ndarray:
    """Rows of ``frame`` (samples x genes, raw values) that satisfy every condition (float32 compare, as sklearn)."""
    mask = np.ones(len(frame), dtype=bool)
    for g, op, thr in conditions:
        v = np.asarray(frame[g].to_numpy(), dtype=np.float32).astype(np.float64)
        mask &= (v <= thr) if op == "<=" else (v > thr)
    return mask


def apply_rules(rules: list, frame: pd.DataFrame) -> np.ndarray:
    """Predictions of one parsed section on ``frame``; object array, None where no rule matches."""
    out = np.full(len(frame), None, dtype=object)
    free = np.ones(len(frame), dtype=bool)
    for conds, _kind, pred in rules:
        hit = covers(conds, frame) & free
        out[hit] = pred
        free &= ~hit
    return out


# ---------------------------------------------------------------------------------------------------------------
# The surrogate: tree + greedy rule list, fitted and predicted through their rules
# ---------------------------------------------------------------------------------------------------------------

def greedy_rule_list(tree_rule_nodes: list, masks: list, target: np.ndarray, *, classification: bool,
                     max_rules: int, min_samples: int):
    """A decision list chosen greedily among the tree's paths.

    Each candidate is a node of the surrogate tree (the conjunction of the conditions on its path). At each step
    the candidate with the best score on the samples not yet covered is appended: classification, the share of
    covered samples with the majority prediction (precision; ties: more samples, then lower node id) - kept only
    when it beats the majority share of the uncovered samples (else a default rule says as much);
    regression, the between-group sum of squares ``n (mean_covered - mean_uncovered)^2``. It stops after
    ``max_rules`` rules or when nothing useful is left; the default rule predicts the majority / mean of
    the rest.

    Parameters
    ----------
    tree_rule_nodes : list of list
        Conditions of each candidate.
    masks : list of ndarray of bool
        The training rows each candidate covers.
    target : ndarray
        Class codes or values the surrogate mimics.

    Returns
    -------
    (rules, default) : list of (conditions, prediction code/value), default prediction
    """
    remaining = np.ones(len(target), dtype=bool)
    rules = []
    used = set()
    while len(rules) < max_rules and remaining.any():
        rest = target[remaining]
        if classification:
            base = np.bincount(rest.astype(int)).max() / rest.size
        best, best_score = None, None
        for i, (conds, mask) in enumerate(zip(tree_rule_nodes, masks)):
            if i in used:
                continue
            cov = mask & remaining
            n = int(cov.sum())
            if n < min_samples or n == int(remaining.sum()):
                continue
            vals = target[cov]
            if classification:
                counts = np.bincount(vals.astype(int))
                pred = int(np.argmax(counts))
                score = (counts[pred] / n, n, -i)
            else:
                pred = _short(float(vals.mean()))
                score = (n * (pred - rest.mean()) ** 2 + (remaining.sum() - n) * (target[remaining & ~cov].mean()
                         - rest.mean()) ** 2, n, -i)
            if best_score is None or score > best_score:
                best, best_score = (i, pred, cov), score
        if best is None:
            break
        if classification and best_score[0] <= base:
            break
        if not classification and best_score[0] <= 1e-12 * max(1.0, float(np.var(rest)) * rest.size):
            break
        i, pred, cov = best
        used.add(i)
        rules.append((tree_rule_nodes[i], pred))
        remaining &= ~cov
    rest = target[remaining] if remaining.any() else target
    default = int(np.argmax(np.bincount(rest.astype(int)))) if classification else _short(float(rest.mean()))
    return rules, default


class Surrogate:
    """A depth-limited CART fitted to the model's predictions, with its greedy rule list.

    Everything it predicts goes through its rules (rounded thresholds included), so the text written is exactly
    what was evaluated.
    """

    def __init__(self, *, classification: bool, max_depth: int, min_samples_leaf: int, max_rules: int,
                 random_state: int):
        self.classification = classification
        self.max_depth, self.min_samples_leaf, self.max_rules = max_depth, min_samples_leaf, max_rules
        self.random_state = random_state

    def fit(self, frame: pd.DataFrame, target: np.ndarray) -> "Surrogate":
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        cls = DecisionTreeClassifier if self.classification else DecisionTreeRegressor
        X = frame.to_numpy(dtype=np.float32)  # what sklearn's tree compares anyway
        self.tree_ = cls(max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                         random_state=self.random_state).fit(X, target)
        genes = [str(c) for c in frame.columns]
        codes = list(range(int(max(self.tree_.classes_)) + 1)) if self.classification else None
        self.leaves_, nodes = tree_rules(self.tree_, gene_names=genes, classes=codes,
                                         thresholds=rounded_thresholds(self.tree_, X), short_values=True)
        # candidates of the rule list: every non-root node's path (leaves and internal nodes)
        cand = [nodes[i] for i in sorted(nodes)]
        masks = [covers(c, frame) for c in cand]
        self.rules_, self.default_ = greedy_rule_list(cand, masks, np.asarray(target),
                                                      classification=self.classification,
                                                      max_rules=self.max_rules, min_samples=self.min_samples_leaf)
        return self

    def predict_tree(self, frame: pd.DataFrame) -> np.ndarray:
        return apply_rules([(leaf["conditions"], "IF", leaf["prediction"]) for leaf in self.leaves_], frame)

    def predict_rules(self, frame: pd.DataFrame) -> np.ndarray:
        rules = [(c, "ELSE IF", p) for c, p in self.rules_] + [([], "ELSE", self.default_)]
        return apply_rules(rules, frame)


def fidelity_score(pred, ref, classification: bool) -> float:
    """Agreement (classes: share of equal predictions) or R^2 (regression) of ``pred`` against ``ref``.

    The one fidelity score of a surrogate against a model (this module, and ``compare``'s
    ``surrogate_fidelity``), also its accuracy against the true labels.
    """
    if classification:
        # codes or class names alike
        return float(np.mean(np.asarray(pred) == np.asarray(ref)))
    from sklearn.metrics import r2_score

    return float(r2_score(np.asarray(ref, dtype=np.float64), np.asarray(pred, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------------------------
# Out-of-fold predictions
# ---------------------------------------------------------------------------------------------------------------

def _refit_predict(pipeline, X, y, train_idx, test_idx):
    """One CV refit: predictions of the held-out rows (picklable for Backend.map)."""
    from sklearn.base import clone

    from iml_genomics.parallel import blas_threads

    with blas_threads(1):
        model = clone(pipeline).fit(X[train_idx], y[train_idx])
        return np.asarray(model.predict(X[test_idx]))


def _first_repeat(splits) -> list:
    """(train, test) of the first CV repeat (every sample held out exactly once)."""
    out = []
    for s in splits:
        if len(s) == 4:
            if s[0] != splits[0][0]:
                continue
            out.append((np.asarray(s[2]), np.asarray(s[3])))
        else:
            out.append((np.asarray(s[0]), np.asarray(s[1])))
    return out


def oof_predictions(ctx: MethodContext, folds: list) -> np.ndarray:
    """The model's out-of-fold predictions (class codes or values) over ``folds``."""
    tasks = [(ctx.refit_pipeline, ctx.X, ctx.y, tr, te) for tr, te in folds]
    preds = ctx.backend.map(_refit_predict, tasks)
    out = np.empty(len(ctx.y), dtype=np.float64)
    for (_, te), p in zip(folds, preds):
        out[te] = class_codes(p, ctx.classes) if ctx.task == "classification" else np.asarray(p, dtype=np.float64)
    return out


def _used_frame(ctx: MethodContext, genes: list) -> pd.DataFrame:
    cols = [ctx.gene_column(g) for g in genes]
    sub = ctx.X[:, cols]
    sub = sub.toarray() if hasattr(sub, "toarray") else np.asarray(sub)
    # float32: the precision the tree splits on, half the memory of float64 at genome scale
    return pd.DataFrame(np.asarray(sub, dtype=np.float32), columns=genes)


# ---------------------------------------------------------------------------------------------------------------
# The model's own tree (model.name: decision_tree)
# ---------------------------------------------------------------------------------------------------------------


def model_tree_rules(pipeline, X, *, gene_ids: list, classes) -> tuple:
    """The rules of a fitted ``decision_tree`` pipeline, on the raw expression scale where that is exact.

    The tree sits after the pipeline's preprocessing. Each threshold is carried back through the steps
    (StandardScaler: t * scale + mean; the gene filter: to the input gene; log1p: expm1), which are increasing
    maps of one gene each, so ``z <= t`` is ``raw <= t_raw``. ``log1p_cpm`` (divides by each sample's total) or an
    unknown step has no per-gene inverse: the rules are then written on the model-input scale (after all
    preprocessing) and ``scale`` says so.

    Returns
    -------
    (leaves, frame, scale)
        ``frame`` is the samples x genes table the rules refer to; ``scale`` is ``raw expression`` or
        ``model input (after preprocessing)``.
    """
    from sklearn.preprocessing import StandardScaler

    from iml_genomics.preprocess import ExpressionTransform, GeneFilter

    steps = [s for _, s in pipeline.steps[:-1]]
    tree = pipeline.steps[-1][1]
    t = tree.tree_
    invertible = all(isinstance(s, (StandardScaler, GeneFilter)) or
                     (isinstance(s, ExpressionTransform) and s.method in ("none", "log1p")) for s in steps)
    n_features = tree.n_features_in_
    if invertible:
        def invert(j, thr):
            for s in reversed(steps):
                if isinstance(s, StandardScaler):
                    if s.with_std and s.scale_ is not None:
                        thr = thr * float(s.scale_[j])
                    if s.with_mean and s.mean_ is not None:
                        thr = thr + float(s.mean_[j])
                elif isinstance(s, GeneFilter):
                    j = int(np.flatnonzero(s.get_support())[j])
                elif s.method == "log1p":
                    thr = float(np.expm1(thr))
            return j, thr

        cols = [invert(j, 0.0)[0] for j in range(n_features)]
        names = [str(gene_ids[c]) for c in cols]
        sub = X[:, cols]
        sub = sub.toarray() if hasattr(sub, "toarray") else np.asarray(sub)
        frame = pd.DataFrame(np.asarray(sub, dtype=np.float64), columns=names)
        thresholds = t.threshold.copy()
        X32 = frame.to_numpy(dtype=np.float32)
        for node in np.flatnonzero(t.children_left != -1):
            j = int(t.feature[node])
            thresholds[node] = _nice_threshold(invert(j, float(t.threshold[node]))[1], X32[:, j])
        scale = "raw expression"
    else:
        from iml_genomics.explain.shap_values import preprocess, split_pipeline
        from iml_genomics.preprocess import used_gene_mask

        Z = preprocess(split_pipeline(pipeline)[0], X)
        names = [str(g) for g, u in zip(gene_ids, used_gene_mask(pipeline, len(gene_ids))) if u]
        frame = pd.DataFrame(Z, columns=names)
        thresholds = rounded_thresholds(tree, Z)
        scale = "model input (after preprocessing)"
    codes = None if classes is None else [str(classes[int(c)]) for c in range(len(classes))]
    leaves, _ = tree_rules(tree, gene_names=names, classes=codes, thresholds=thresholds)
    return leaves, frame, scale


# ---------------------------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------------------------

def _held_out_folds(ctx: MethodContext, target: np.ndarray, classification: bool) -> list:
    """The folds the surrogate is evaluated on: the step's first CV repeat, else a seeded (stratified) K-fold."""
    if ctx.splits:
        return _first_repeat(ctx.splits)
    from sklearn.model_selection import KFold, StratifiedKFold

    n_splits = int(min(5, len(target)))
    if classification and np.bincount(target.astype(int)).min(initial=len(target)) >= n_splits \
            and len(np.unique(target)) > 1:
        split = StratifiedKFold(n_splits, shuffle=True, random_state=ctx.random_state).split(target, target)
    else:
        split = KFold(n_splits, shuffle=True, random_state=ctx.random_state).split(target)
    return [(tr, te) for tr, te in split]


def _name(code, classes, classification: bool):
    return str(classes[int(code)]) if classification else float(code)


def run(ctx: MethodContext) -> MethodOutput:
    """Fit and evaluate the global surrogate (and export a decision-tree model's own rules).

    Returns tables ``surrogate.tsv`` and texts ``surrogate_rules.txt`` (+ ``model_rules.txt`` for a
    ``decision_tree`` model). See docs/explain.md, "Global surrogate and rules".
    """
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    cfg = ctx.explain_cfg
    classification = ctx.task == "classification"
    labelled = ctx.y is not None
    genes = ctx.ranking[ctx.ranking["used"].astype(bool)]["gene_id"].astype(str).tolist()
    genes = [g for g in ctx.gene_ids if g in set(genes)]  # input order, so the tree's tie-breaks are stable
    frame = _used_frame(ctx, genes)
    out = MethodOutput()
    if labelled:
        folds = _first_repeat(ctx.splits)
        target = oof_predictions(ctx, folds)
        target_note = "out-of-fold predictions of the model (first CV repeat)"
    else:
        target = np.asarray(ctx.pipeline.predict(ctx.X))
        target = (class_codes(target, ctx.classes) if classification else target).astype(np.float64)
        target_note = "in-sample predictions of the final model (no labels)"
        folds = _held_out_folds(ctx, target, classification)
    truth = None
    if labelled:
        truth = (class_codes(ctx.y, ctx.classes) if classification else np.asarray(ctx.y)).astype(np.float64)

    def make():
        return Surrogate(classification=classification, max_depth=cfg.surrogate_max_depth,
                         min_samples_leaf=cfg.surrogate_min_samples_leaf, max_rules=cfg.surrogate_max_rules,
                         random_state=ctx.random_state)

    # nested evaluation: each fold's surrogate sees the other folds' samples only
    held_tree = np.empty(len(target))
    held_rules = np.empty(len(target))
    for tr, te in folds:
        s = make().fit(frame.iloc[tr].reset_index(drop=True), target[tr])
        test = frame.iloc[te].reset_index(drop=True)
        held_tree[te] = s.predict_tree(test).astype(np.float64)
        held_rules[te] = s.predict_rules(test).astype(np.float64)
    final = make().fit(frame, target)

    fid_tree = fidelity_score(held_tree, target, classification)
    fid_rules = fidelity_score(held_rules, target, classification)
    acc_tree = acc_rules = acc_model = None
    if labelled:
        acc_tree = fidelity_score(held_tree, truth, classification)
        acc_rules = fidelity_score(held_rules, truth, classification)
        acc_model = fidelity_score(target, truth, classification)
    metric = "agreement" if classification else "R^2"

    rows = []
    rows.append({"source": "surrogate_tree", "row_type": "summary", "rule_id": 0, "rule": "(all samples)",
                 "prediction": "", "n_samples": len(target), "fidelity": fid_tree, "accuracy": acc_tree,
                 "evaluated_on": "held_out_cv"})
    tree_pred = final.predict_tree(frame).astype(np.float64)
    for i, leaf in enumerate(final.leaves_, 1):
        hit = covers(leaf["conditions"], frame)
        rows.append({"source": "surrogate_tree", "row_type": "leaf", "rule_id": i,
                     "rule": condition_text(leaf["conditions"]),
                     "prediction": _name(leaf["prediction"], ctx.classes, classification),
                     "n_samples": int(hit.sum()), **_in_rule(leaf["prediction"], hit, target, truth, classification)})
    rows.append({"source": "surrogate_rule_list", "row_type": "summary", "rule_id": 0, "rule": "(all samples)",
                 "prediction": "", "n_samples": len(target), "fidelity": fid_rules, "accuracy": acc_rules,
                 "evaluated_on": "held_out_cv"})
    free = np.ones(len(target), dtype=bool)
    for i, (conds, pred) in enumerate([*final.rules_, ([], final.default_)], 1):
        hit = covers(conds, frame) & free
        free &= ~hit
        rows.append({"source": "surrogate_rule_list", "row_type": "rule" if conds else "default", "rule_id": i,
                     "rule": condition_text(conds) if conds else "ELSE",
                     "prediction": _name(pred, ctx.classes, classification), "n_samples": int(hit.sum()),
                     **_in_rule(pred, hit, target, truth, classification)})

    header = [
        "# Global surrogate of the model (iml-genomics explain, method surrogate).",
        f"# Fitted to: {target_note}; {len(genes)} genes the model uses, {len(target)} samples.",
        "# Thresholds are on the RAW expression scale: the values of the input matrix, before the model's "
        "transform, gene filter and scaling.",
        f"# Fidelity = {metric} with the model's predictions; accuracy = {metric} with the true labels; both on "
        f"held-out samples ({len(folds)}-fold CV over the surrogate's own fits).",
    ]
    lines = [*header, "", f"# decision tree, depth <= {cfg.surrogate_max_depth}: held-out fidelity {fid_tree:.3f}"
             + (f", accuracy {acc_tree:.3f} (model: {acc_model:.3f})" if labelled else ""),
             "# leaves are disjoint: exactly one IF matches a sample", "[tree]"]
    for r in [r for r in rows if r["source"] == "surrogate_tree" and r["row_type"] == "leaf"]:
        lines.append(f"# leaf {r['rule_id']}: {r['n_samples']} samples, {_pct(r['fidelity'])} of them predicted "
                     f"so by the model" if classification else f"# leaf {r['rule_id']}: {r['n_samples']} samples")
        leaf = final.leaves_[r["rule_id"] - 1]
        lines.append(f"IF {condition_text(leaf['conditions'])} THEN {_then(r['prediction'], ctx.classes)}")
    lines += ["", f"# rule list (first matching rule wins): held-out fidelity {fid_rules:.3f}"
              + (f", accuracy {acc_rules:.3f}" if labelled else ""), "[rule_list]"]
    for k, (conds, pred) in enumerate(final.rules_):
        lines.append(f"{'IF' if k == 0 else 'ELSE IF'} {condition_text(conds)} THEN "
                     f"{_then(_name(pred, ctx.classes, classification), ctx.classes)}")
    lines.append(f"ELSE THEN {_then(_name(final.default_, ctx.classes, classification), ctx.classes)}")
    out.texts["surrogate_rules.txt"] = "\n".join(lines) + "\n"

    summary = {"target": target_note, "n_genes": len(genes), "n_samples": len(target), "n_folds": len(folds),
               "metric": metric, "max_depth": cfg.surrogate_max_depth, "n_leaves": len(final.leaves_),
               "n_rules": len(final.rules_), "fidelity_tree": fid_tree, "fidelity_rule_list": fid_rules,
               "accuracy_tree": acc_tree, "accuracy_rule_list": acc_rules, "accuracy_model_oof": acc_model,
               "in_sample_fidelity_tree": fidelity_score(tree_pred, target, classification),
               "threshold_scale": "raw expression (pipeline input)",
               "accuracy_skipped": None if labelled else "no labels"}
    if classification:
        summary["predicted_classes"] = sorted({str(ctx.classes[int(c)]) for c in np.unique(target)})

    # --- the model's own rules when it is a decision tree ---------------------------------------------------
    est = ctx.pipeline.steps[-1][1] if hasattr(ctx.pipeline, "steps") else ctx.pipeline
    if isinstance(est, (DecisionTreeClassifier, DecisionTreeRegressor)):
        leaves, mframe, scale = model_tree_rules(ctx.pipeline, ctx.X, gene_ids=ctx.gene_ids,
                                                 classes=ctx.classes if classification else None)
        model_pred = np.asarray(ctx.pipeline.predict(ctx.X))
        ref = (np.asarray([str(ctx.classes[c]) for c in class_codes(model_pred, ctx.classes)], dtype=object)
               if classification
               else model_pred.astype(np.float64))
        written = apply_rules([(leaf["conditions"], "IF", leaf["prediction"]) for leaf in leaves], mframe)
        fid_model = (float(np.mean(written == ref)) if classification else
                     fidelity_score(written.astype(np.float64), ref, False))
        mlines = ["# The model itself (model.name: decision_tree), its leaves as rules (iml-genomics explain).",
                  f"# Thresholds are on the {scale.upper()} scale"
                  + (": the values of the input matrix; the model's scaling carried back gene by gene."
                     if scale == "raw expression" else "."),
                  f"# Fidelity of these written rules to the model's predictions on the {len(ref)} samples: "
                  f"{fid_model:.4f} ({metric}).", "[model_tree]"]
        for i, leaf in enumerate(leaves, 1):
            hit = covers(leaf["conditions"], mframe)
            mlines.append(f"# leaf {i}: {int(hit.sum())} samples")
            mlines.append(f"IF {condition_text(leaf['conditions'])} THEN {_then(leaf['prediction'], ctx.classes)}")
            in_rule = _in_rule_named(leaf["prediction"], hit, ref, truth, ctx.classes, classification)
            rows.append({"source": "model_tree", "row_type": "leaf", "rule_id": i,
                         "rule": condition_text(leaf["conditions"]), "prediction": leaf["prediction"],
                         "n_samples": int(hit.sum()), **in_rule})
        rows.append({"source": "model_tree", "row_type": "summary", "rule_id": 0, "rule": "(all samples)",
                     "prediction": "", "n_samples": len(ref), "fidelity": fid_model, "accuracy": None,
                     "evaluated_on": "cohort"})
        out.texts["model_rules.txt"] = "\n".join(mlines) + "\n"
        summary["model_rules"] = {"n_leaves": len(leaves), "fidelity": fid_model, "threshold_scale": scale}
        if fid_model < 1.0:
            out.warnings.append(f"explain: the decision tree's written rules agree with the model on "
                                f"{fid_model:.4f} of the samples only (thresholds on the {scale} scale)")

    table = pd.DataFrame(rows, columns=SURROGATE_COLUMNS[:-1])
    table["explains"] = "model"
    out.tables["surrogate.tsv"] = table
    out.summary = summary
    if (classification and fid_tree < 0.8) or (not classification and fid_tree < 0.5):
        out.summary["fidelity_note"] = ("low fidelity: the shallow tree does not describe this model well; read "
                                        "its rules as a rough sketch, not as the model's logic")
    return out


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.0f}%"


def _in_rule(pred, hit, target, truth, classification: bool) -> dict:
    """In-sample fidelity / accuracy of one leaf or rule on the samples it covers (codes)."""
    n = int(hit.sum())
    if not n or not classification:
        return {"fidelity": None, "accuracy": None, "evaluated_on": "in_rule"}
    return {"fidelity": float(np.mean(target[hit] == pred)),
            "accuracy": None if truth is None else float(np.mean(truth[hit] == pred)), "evaluated_on": "in_rule"}


def _in_rule_named(pred, hit, ref, truth, classes, classification: bool) -> dict:
    """As :func:`_in_rule` with class names (the model tree's predictions)."""
    n = int(hit.sum())
    if not n or not classification:
        return {"fidelity": None, "accuracy": None, "evaluated_on": "in_rule"}
    acc = None
    if truth is not None:
        acc = float(np.mean(np.asarray([str(classes[int(c)]) for c in truth[hit]]) == pred))
    return {"fidelity": float(np.mean(ref[hit] == pred)), "accuracy": acc, "evaluated_on": "in_rule"}
