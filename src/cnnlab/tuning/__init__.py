"""Hyperparameter search over config keys with Optuna: pruned, resumable, distributed.

``tune(config, ...)`` runs the config's ``search:`` section as an Optuna study (see study.py);
``cnnlab tune`` is its command line. docs/tuning.md explains studies across machines.
"""

from __future__ import annotations

from typing import Any


def tune(config: Any, **kwargs: Any) -> Any:
    """See :func:`cnnlab.tuning.study.tune` (imported lazily: Optuna is an optional extra)."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        from cnnlab.errors import CnnlabError

        raise CnnlabError('tuning needs Optuna: pip install "cnnlab[tune]"') from None
    from cnnlab.tuning.study import tune as _tune

    return _tune(config, **kwargs)


__all__ = ["tune"]
