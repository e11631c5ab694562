"""Reports: the HTML run report, the study runner and its report, and the list of runs.

    from cnnlab.reports import write_run_report, run_study, study_report, list_runs
    write_run_report("runs/mobilenet-I-20250101-120000")       # -> .../report/report.html
    run_study("studies/seed_cifar10.yaml", max_train_samples=2000, epochs=3)
    study_report("studies/seed_cifar10.yaml")                   # -> studies/out/seed_cifar10/report/
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "write_run_report": "cnnlab.reports.run_report",
    "load_study": "cnnlab.reports.study",
    "run_study": "cnnlab.reports.study",
    "study_status": "cnnlab.reports.study",
    "study_report": "cnnlab.reports.study_results",
    "list_runs": "cnnlab.reports.runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI's start-up stays fast and matplotlib loads only when drawing.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnlab.reports' has no attribute {name!r}")
