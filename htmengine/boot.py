"""One boot for every process: logging, config errors, metrics port, stop signals.

Each service's ``main()`` is ``return run_service(NAME, serve)`` where ``serve(boot)`` reads its
configuration, builds its parts and runs until stopped:

* ``boot.log`` is the service's logger, ``htmengine.<name>`` (`service_logger`), on stderr;
* a `ConfigError` anywhere in `serve` (a missing variable, file or key, or a bad value) ends the
  process with one line on stderr, ``<name>: configuration error: <what>``, and exit code 2,
  before anything was logged (read the configuration first);
* ``boot.serve_metrics(registry)`` serves /metrics on the port of the service's config section
  (`htmengine.instrumentation.METRICS_PORT_KEYS`);
* ``boot.on_stop(stop)`` calls `stop` on SIGTERM or SIGINT (supervisord's stop signals); the
  service finishes what it holds and returns from `serve`.

`name` is the supervisord program name (metric_listener, metric_storer, model_scheduler,
anomaly_service).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from htmengine.config import ConfigError
from htmengine.instrumentation import METRICS_HOST, metrics_port, serve_metrics
from htmengine.logging_support import service_logger, setup_logging

__all__ = ["EXIT_CONFIG_ERROR", "ServiceBoot", "run_service"]

# Exit code of a process stopped by its configuration (supervisord: see exitcodes).
EXIT_CONFIG_ERROR = 2

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServiceBoot:
    """What `run_service` hands a service: its name and logger, metrics and signal set-up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = service_logger(name)

    def serve_metrics(self, registry: CollectorRegistry, host: str = METRICS_HOST) -> bool:
        """Serve `registry` on the configured metrics port (False if it is taken)."""
        return serve_metrics(registry, metrics_port(self.name), host)

    def on_stop(self, stop: Callable[[], None]) -> None:
        """Call `stop` (from the main thread) on SIGTERM or SIGINT."""

        def handler(signum: int, _frame: object) -> None:
            self.log.info("%s: stopping", signal.Signals(signum).name)
            stop()

        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)


def run_service(name: str, serve: Callable[[ServiceBoot], int | None]) -> int:
    """Run a service's `serve(boot)`; returns the process exit code (`serve`'s, else 0)."""
    setup_logging(name)
    try:
        code = serve(ServiceBoot(name))
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0 if code is None else code
