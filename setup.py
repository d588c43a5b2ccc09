"""Kept so that `python setup.py develop`, as the original's users installed it, still works; the
metadata is pyproject.toml's."""

from setuptools import setup

setup()
