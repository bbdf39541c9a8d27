"""The design, measured: the import graph (scripts/import_graph.py), what importing costs, and a
non-editable install that finds its weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_import_graph_has_no_cycle_no_upward_import_and_at_most_ten_layers() -> None:
    graph = json.loads(run(sys.executable, "scripts/import_graph.py", "--json"))
    assert graph["modules"] >= 30  # the package was read, not an empty folder
    assert graph["cycles"] == []
    assert graph["upward_imports"] == []
    assert graph["layers"] <= 10, " -> ".join(graph["longest_chain"])


def test_the_graph_script_sees_cycles_and_upward_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: a made-up package with a cycle and a data -> model import is flagged."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import import_graph
    finally:
        sys.path.remove(str(REPO / "scripts"))
    package = tmp_path / "skin_model"
    (package / "data").mkdir(parents=True)
    (package / "model").mkdir()
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "model" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("from skin_model.model import b\n")
    (package / "model" / "b.py").write_text("def f():\n    from skin_model.data import a\n")
    (package / "constants.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from skin_model.model import b\n")
    monkeypatch.setattr(import_graph, "ROOT", tmp_path)
    result = import_graph.summary()
    assert result["cycles"] == [["skin_model.data.a", "skin_model.model.b"]]
    assert result["upward_imports"] == ["skin_model.data.a -> skin_model.model.b"]
    assert result["graph"]["skin_model.constants"] == []  # type-checking imports are not run-time imports


@pytest.mark.parametrize("code", [
    "import skin_model.constants",
    "import skin_model; skin_model.CLASSES",
    "import skin_model.cli",
    "import skin_model.model.card",
])
def test_light_imports_do_not_load_torch(code: str) -> None:
    out = run(sys.executable, "-c", f"{code}; import sys; print('torch' in sys.modules, 'pandas' in sys.modules)")
    assert out.split() == ["False", "False"], code


def test_a_prediction_loads_only_what_it_uses(tiny_weights: Path) -> None:
    """Scoring a photo needs torch and the network, not Grad-CAM, torchvision or OpenCV (their import
    alone took seconds of every CLI call)."""
    code = ("import sys\nimport helpers\nbefore = set(sys.modules)\n"  # helpers: the tiny weights' stub backbone
            "from PIL import Image\nfrom skin_model.predict import load_predictor\n"
            f"p = load_predictor({str(tiny_weights)!r}, device='cpu')\n"
            "p.predict([Image.new('RGB', (200, 150), (200, 150, 120))])\n"
            "new = set(sys.modules) - before\n"
            "print([m for m in ('torchvision', 'pytorch_grad_cam', 'cv2') if m in new])")
    out = run(sys.executable, "-c", code, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert out.strip() == "[]"


def test_cli_help_does_not_load_torch() -> None:
    code = ("import sys, runpy; sys.argv = ['skin-model', '--help']\n"
            "try:\n    runpy.run_module('skin_model', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    out = run(sys.executable, "-c", code)
    assert "predict" in out and out.strip().endswith("torch not loaded")


@pytest.mark.slow
def test_non_editable_install_predicts_with_the_shipped_weights(tmp_path: Path) -> None:
    """`pip install .` (a wheel, not editable) into a fresh venv, then `skin-model predict photo.jpg`
    from another folder: the weights travel in the wheel. The venv borrows this environment's
    dependencies through a .pth file (no download)."""
    from PIL import Image

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    ours = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "borrowed_dependencies.pth").write_text("\n".join(ours) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SKIN_MODEL_WEIGHTS", "VIRTUAL_ENV")}
    # `pip install .` is "build a wheel, install it": built here (this environment has setuptools and wheel),
    # installed into the fresh venv (installing a wheel needs neither).
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
        str(REPO), env=env, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("skin_model-*.whl"))
    run(str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel), env=env, cwd=tmp_path)
    located = run(str(python), "-c", "import skin_model, skin_model.model.checkpoint as c; "
                  "print(skin_model.__file__); print(c.default_weights_dir())", env=env, cwd=tmp_path).split()
    assert str(REPO) not in located[0] and located[1].startswith(site), located
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (200, 150), (200, 150, 120)).save(photo)
    out = run(str(env_dir / "bin" / "skin-model"), "predict", str(photo), "--json", env=env, cwd=tmp_path)
    result = json.loads(out)
    assert result["classes"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(result["images"]) == 1 and result["images"][0]["file"].endswith("photo.jpg")
