"""htmengine: a Python 3 HTM Engine (anomaly detection for streaming metrics)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    runtime = []
    for line in lines:
        line = line.strip()
        if line.startswith("# Tests"):
            break
        if line and not line.startswith("#"):
            runtime.append(line)
    return runtime


setup(
    name="htmengine",
    version="0.1.0",
    description="HTM Engine: anomaly detection for streaming metrics (Python 3)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["htmengine", "htmengine.*"]),
    package_data={
        "htmengine.repository": ["migrations/*.py", "migrations/*.ini", "migrations/versions/*.py"],
        "htmengine.adapters.datasource": ["*.json", "custom/*.json"],
        "htmengine.webapp": ["static/*.*", "static/vendor/*"],
    },
    include_package_data=True,
    install_requires=_requirements(),
    entry_points={"console_scripts": ["htmengine = htmengine.cli:main"]},
)
