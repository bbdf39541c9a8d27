"""skin_model.explain.deferred_imports: pytorch-grad-cam loads without scikit-learn, SciPy or matplotlib,
and everything it took from them still works when first used."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skin_model.explain.deferred_imports import OnFirstUse, deferred_imports


@pytest.fixture
def fake_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`heavy` (records that it was imported) and `light`, which takes a function from it."""
    (tmp_path / "heavy.py").write_text("import sys\nsys.heavy_imported = True\n\ndef double(x):\n    return 2 * x\n")
    (tmp_path / "light.py").write_text("from heavy import double\n\ndef quadruple(x):\n    return double(double(x))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delattr(sys, "heavy_imported", raising=False)
    for name in ("heavy", "light"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_a_deferred_module_is_imported_on_first_use(fake_packages: Path) -> None:
    with deferred_imports(("heavy",)):
        import light
    assert "heavy" not in sys.modules and not hasattr(sys, "heavy_imported")
    assert isinstance(light.double, OnFirstUse)
    assert light.quadruple(3) == 12
    assert sys.heavy_imported and "heavy" in sys.modules
    import heavy

    assert heavy.double(5) == 10  # the real module, not a placeholder


def test_a_module_already_imported_is_left_alone(fake_packages: Path) -> None:
    import heavy

    with deferred_imports(("heavy",)):
        import light
    assert light.double is heavy.double and sys.modules["heavy"] is heavy


def test_placeholders_are_removed_even_when_the_import_fails(fake_packages: Path) -> None:
    with pytest.raises(ModuleNotFoundError), deferred_imports(("heavy",)):
        import no_such_module  # noqa: F401
    assert "heavy" not in sys.modules


def test_explain_loads_without_sklearn_scipy_matplotlib_and_grad_cam_still_works() -> None:
    # A fresh interpreter: this test process may have imported any of them already.
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import skin_model.explain.cam
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "scipy", "matplotlib"})
        assert heavy == [], heavy
        from pytorch_grad_cam.utils import image, svd_on_activations
        acts = np.random.default_rng(0).random((1, 4, 3, 3), dtype=np.float32)
        assert svd_on_activations.get_2d_projection_kernel(acts).shape == (1, 3, 3)  # KernelPCA
        assert image.scale_cam_image(acts[:, :2], (5, 4, 3)).shape == (1, 3, 4, 5)  # scipy zoom
        assert image.plt.rcParams["figure.dpi"] > 0 and callable(image.Line2D)
        assert {"sklearn", "scipy", "matplotlib"} <= {m.split(".")[0] for m in sys.modules}
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
