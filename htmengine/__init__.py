"""htmengine: HTM anomaly detection engine for streaming metrics.

Importing the package has no side effects: configuration is read by the services
(`htmengine.config`), and the HTM library (`htmengine.htm`) needs no configuration.
"""

__version__ = "0.1.0"
