"""Datasource adapters: how an application asks for models of its metrics.

``createDatasourceAdapter("custom")`` returns the adapter of pushed (graphite) metrics, the only
datasource htmengine has; the registry keeps the original's entry point for apps.
"""

from __future__ import annotations

from htmengine.adapters.datasource.custom import CustomDatasourceAdapter
from htmengine.adapters.datasource.model_spec import validate_model_spec

__all__ = [
    "CustomDatasourceAdapter",
    "createCustomDatasourceAdapter",
    "createDatasourceAdapter",
    "validate_model_spec",
]

_ADAPTERS = {CustomDatasourceAdapter.DATASOURCE: CustomDatasourceAdapter}


def createDatasourceAdapter(datasource: str) -> CustomDatasourceAdapter:
    """The adapter of `datasource`; ValueError names the known ones if it is not one of them."""
    try:
        adapter_class = _ADAPTERS[datasource]
    except KeyError:
        raise ValueError(
            f"unknown datasource {datasource!r}; known: {', '.join(sorted(_ADAPTERS))}"
        ) from None
    return adapter_class()


def createCustomDatasourceAdapter() -> CustomDatasourceAdapter:
    """Shortcut for createDatasourceAdapter("custom")."""
    return createDatasourceAdapter(CustomDatasourceAdapter.DATASOURCE)
