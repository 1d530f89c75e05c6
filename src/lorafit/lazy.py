"""Package exports imported on first use (PEP 562), so that importing one light submodule of a package
(the CLI reads serve/settings.py's and export/settings.py's defaults to build its parser) does not load
the package's heavy modules (torch, the model stack) through its __init__."""
from __future__ import annotations

from importlib import import_module


def exports(package: str, where: dict[str, str]):
    """(__getattr__, __all__) for a package whose names `where` maps to the submodule defining each."""
    def __getattr__(name: str):
        if name in where:
            return getattr(import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(where)
