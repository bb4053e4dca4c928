"""genscale: train, evaluate and serve generative models; measure whether data or compute buys quality.

The Python API (genscale/api.py): `from genscale import train, evaluate, sample, study, load`. It is imported when
first used, so `import genscale` stays fast (no torch, no MLflow; nothing but `sys`, which is always loaded).
`genscale.train` and `genscale.study` are also the sub-packages of those names; whichever is imported first, calling
the package calls the API function.
"""

import sys

__version__ = "0.1.0"
__all__ = ["Run", "Study", "Verdict", "evaluate", "load", "sample", "study", "train"]
_API = {"Run", "Study", "Verdict", "evaluate", "load", "sample"}


def __getattr__(name: str) -> object:  # PEP 562: the API on first use
    if name in _API:
        from genscale import api

        return getattr(api, name)
    raise AttributeError(f"module 'genscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _CallablePackage(type(sys)):  # type(sys): types.ModuleType without importing types
    def __call__(self, *args: object, **kwargs: object) -> object:
        from genscale import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def callable_package(name: str) -> None:
    """Make the sub-package `name` (genscale.train, genscale.study) call the API function of its last name."""
    sys.modules[name].__class__ = _CallablePackage
