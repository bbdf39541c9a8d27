"""A real server and browsers, for the end-to-end tests of this folder: `streamlit run` of the
repository's app on a free port, and headless Chromium driven through Selenium.

The test modules import these helpers with `from .conftest import ...` (this folder is a
package, so its conftest does not take the name `conftest` from the suite's shared one).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_tiny_model

from skin_model.constants import BACKBONE
from skin_model.model import checkpoint
from skin_model.model.card import ModelCard

REPO = Path(__file__).resolve().parents[2]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_STARTUP_TIMEOUT = 180  # importing torch and loading the model on a busy CPU


@pytest.fixture(scope="session")
def server_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny untrained weights that a separate `streamlit run` process can load, so the servers
    never need the shipped weights. They use the real backbone: the suite's fast stub backbone
    is registered only inside the test process."""
    directory = tmp_path_factory.mktemp("server_weights")
    checkpoint.save(build_tiny_model(backbone=BACKBONE), directory, ModelCard(name="tiny end-to-end stub"))
    return directory


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (for a server of the test's own)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_health(url: str) -> str:
    """What the server's health route answers ("ok" once it serves), or "" while it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
            return response.read().decode().strip()
    except OSError:
        return ""


class StreamlitServer:
    """`streamlit run streamlit_app.py` on a free port of 127.0.0.1, in the repository root.

    `env` replaces the environment of the server entirely (pass `{**os.environ, ...}` to extend it).
    """

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path = REPO) -> None:
        import subprocess
        import sys
        import time

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**env, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(self.port),
                 "--server.address", "127.0.0.1", "--server.headless", "true",
                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT
        while server_health(self.url) != "ok":
            if self.process.poll() is not None:
                pytest.fail(f"streamlit exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"streamlit did not answer on {self.url} within {SERVER_STARTUP_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.5)

    def log(self) -> str:
        """The end of the server's output, for a failure message."""
        return self.log_path.read_text(errors="replace")[-3000:]

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 20 s)."""
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def require_chromium() -> None:
    """Skip the test when Chromium is absent (call it in the test's own thread: a skip raised in a
    worker thread would be reported as that session's error)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium and chromium-driver)")


def chromium_driver(profile: Path, window: str = "1400,2000"):
    """A headless Chromium (Selenium) with its own user-data-dir; skips when Chromium is absent."""
    require_chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile.mkdir(parents=True, exist_ok=True)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", f"--window-size={window}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
