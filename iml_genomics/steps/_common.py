"""Small helpers shared by the step modules (no heavy imports)."""

from __future__ import annotations

import copy


def resolved(cfg, n_jobs, random_state):
    """A private copy of ``cfg`` with the step's ``n_jobs`` / ``random_state`` applied.

    Steps never change the caller's config object (the CLI has already recorded it in provenance).
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
    """The name error messages give the labels: the labels file, else the expression file (an .h5ad obs)."""
    sources = adata.uns.get("sources") or {}
    return str(sources.get("labels") or sources.get("expression") or "labels")
