"""Import a package whose module-level imports include heavy libraries it needs only in
functions we never call, without paying for them.

pytorch-grad-cam imports scikit-learn, SciPy and matplotlib as it loads, for its
KernelPCA and NMF factorisations, the ROAD metric, matplotlib legends and 3-D zoom;
the app uses none of them, yet they cost it about 100 MB of resident memory. Inside
`deferred_imports`, each listed module that is not imported yet is replaced by a
placeholder, and a name taken from it by a `from` import becomes a stand-in that
imports the real module when it is first called or read. So every function of the
package still works; only the import is put off until something needs it.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class OnFirstUse:
    """`module.name`, imported when first called or read."""

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name

    def resolve(self) -> Any:
        module = importlib.import_module(self._module)
        try:
            return getattr(module, self._name)
        except AttributeError:  # a submodule not imported yet, e.g. matplotlib.pyplot
            return importlib.import_module(f"{self._module}.{self._name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.resolve(), attr)

    def __repr__(self) -> str:
        return f"<{self._module}.{self._name}, imported on first use>"


@contextmanager
def deferred_imports(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block, `from NAME import x` binds x to an `OnFirstUse` for each listed
    module not imported yet; after it, those modules import for real again."""
    loading = True

    def placeholder(name: str) -> types.ModuleType:
        module = types.ModuleType(name, "placeholder until first use")

        def attribute(attr: str) -> Any:
            if attr.startswith("__"):  # import machinery probing for __path__, __spec__, ...
                raise AttributeError(attr)
            # A module bound whole (its parent was already imported) forwards to the real one later.
            return OnFirstUse(name, attr) if loading else getattr(importlib.import_module(name), attr)

        module.__getattr__ = attribute  # type: ignore[method-assign]
        return module

    stand_ins = {name: placeholder(name) for name in names if name not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        loading = False
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
