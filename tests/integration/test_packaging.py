"""The package installs the way the original's users installed it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_BUILD_LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.egg-info")


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


def test_an_installed_package_runs_without_the_checkout(tmp_path: Path) -> None:
    """A plain (non-editable) install carries its data files and console script; `up` and `down`
    say in one line that they need a source checkout."""
    # A copy of what the build reads, so the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO / "htmengine", source / "htmengine", ignore=_BUILD_LEFTOVERS)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            f"--target={target}",
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    package = target / "htmengine"
    assert (package / "repository" / "migrations" / "env.py").is_file()
    assert (package / "repository" / "migrations" / "script.py.mako").is_file()
    assert list((package / "repository" / "migrations" / "versions").glob("0001_*.py"))
    assert (package / "adapters" / "datasource" / "model_spec_schema.json").is_file()
    assert (
        package / "adapters" / "datasource" / "custom" / "custom_metric_spec_schema.json"
    ).is_file()
    assert (package / "webapp" / "static" / "index.html").is_file()
    assert (package / "webapp" / "static" / "vendor" / "uPlot.iife.min.js").is_file()
    script = target / "bin" / "htmengine"
    assert script.is_file(), "console script 'htmengine' was not installed"
    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("APPLICATION_CONFIG_PATH", None)
    imported = subprocess.run(
        [sys.executable, "-c", "import htmengine.cli; print(htmengine.__file__)"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert imported == str(package / "__init__.py")
    for command in ("up", "down"):
        result = subprocess.run(
            [sys.executable, str(script), command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(
            f"Error: this command runs scripts/{command}.sh of a source checkout"
        )
        assert str(package) in line
