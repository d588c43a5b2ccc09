"""The original's module name for handing rows to a model; the code is `htmengine.engine.model_input`."""

from __future__ import annotations

from htmengine.engine.model_input import input_rows, send_input_rows_to_model

__all__ = ["input_rows", "sendInputRowsToModel", "send_input_rows_to_model"]

# The original's name, for apps that fed models themselves.
sendInputRowsToModel = send_input_rows_to_model
