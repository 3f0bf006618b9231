"""Small helpers shared by the step modules (no heavy imports)."""

from __future__ import annotations

import copy


def resolved(cfg, n_jobs, random_state):
    """A private copy of ``cfg`` with the step's ``n_jobs`` / ``random_state`` applied.

    Steps never change the caller's config object (the CLI has already recorded it in provenance).

    Parameters
    ----------
    cfg : iml_genomics.config.Config
    n_jobs, random_state : int or None
        None keeps the config's ``n_jobs`` / ``seed``.

    Returns
    -------
    iml_genomics.config.Config
    """
    cfg = copy.deepcopy(cfg)
    if n_jobs is not None:
        cfg.n_jobs = n_jobs
    if random_state is not None:
        cfg.seed = random_state
    return cfg


def step_backend(cfg, backend):
    """The :class:`~iml_genomics.parallel.Backend` a step runs on.

    ``backend`` when given (the CLI and ``run`` build it once, before reading data); else one built from the
    resolved ``cfg``: ``parallel.scheduler`` (contacted now; ConfigError when unreachable) and ``n_jobs``.
    """
    from iml_genomics.parallel import Backend, resolve_backend

    if backend is not None:
        return resolve_backend(backend)
    return Backend.from_config(cfg)


def expression_source(adata, source: str | None) -> str:
    """The name error messages give the expression matrix: ``source``, else what the reader recorded."""
    if source:
        return str(source)
    return str((adata.uns.get("sources") or {}).get("expression", "expression"))


def label_source(adata) -> str:
    """The name error messages give the labels: the labels file, else the expression file (an .h5ad obs).

    An AnnData built in memory (a notebook's, through ``ig.tl``) has no files: its labels are ``adata.obs``.
    """
    sources = adata.uns.get("sources") or {}
    return str(sources.get("labels") or sources.get("expression") or "adata.obs")


def require_label_column(adata, column, source: str) -> None:
    """Refuse a label column that is not given or not in ``adata.obs``, listing the columns there are.

    Raises
    ------
    iml_genomics.errors.InputDataError
    """
    from iml_genomics.errors import InputDataError
    from iml_genomics.io.ids import show_id

    if column is not None and column in adata.obs.columns:
        return
    shown = ", ".join(show_id(c, 60) for c in list(adata.obs.columns)[:20]) or "none"
    what = "no label column given" if column is None else f"label column '{show_id(column)}' not found"
    raise InputDataError(f"{source}: {what}; columns of obs: {shown}. Set data.label_column (label_column= in "
                         f"ig.tl, --label-column at the shell) to the outcome column.")
