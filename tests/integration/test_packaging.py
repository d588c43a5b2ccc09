"""The package installs the way the original's users installed it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_setup_py_develop_into_a_site_directory_on_pythonpath(tmp_path: Path) -> None:
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site_dir))
    subprocess.run(
        [sys.executable, "setup.py", "-q", "develop", f"--install-dir={site_dir}", "--no-deps"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    assert (site_dir / "htmengine.egg-link").read_text().splitlines()[0] == str(REPO)
    script = site_dir / "htmengine"
    assert script.exists(), "console script 'htmengine' was not installed"
    # A site directory processes the .pth file setuptools wrote: the checkout joins sys.path.
    probe = (
        "import site, sys; before = set(sys.path); "
        f"site.addsitedir({str(site_dir)!r}); "
        "print([p for p in sys.path if p not in before]); "
        "import htmengine, htmengine.cli; print(htmengine.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=""),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    added, module_file = out.strip().splitlines()
    assert str(REPO) in added
    assert module_file == str(REPO / "htmengine" / "__init__.py")
