"""Entry point of the webapp program: ``python -m htmengine.webapp``."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from htmengine.config import ConfigError, get_app_config, get_rabbitmq_config
from htmengine.logging_support import setup_logging
from htmengine.webapp import settings as webapp_settings

SERVICE_NAME = "webapp"
# A disabled webapp outlives supervisord's startsecs before it exits, so the exit counts as
# expected (EXITED) rather than as a failed start to be retried.
DISABLED_EXIT_DELAY_SEC = 3.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m htmengine.webapp", description="htmengine's HTTP API and dashboard."
    )
    parser.add_argument("--host", help="address to bind (default: [webapp] host)")
    parser.add_argument("--port", type=int, help="port (default: [webapp] port)")
    args = parser.parse_args(argv)
    log = setup_logging(SERVICE_NAME)
    try:
        app_config = get_app_config()
        if not webapp_settings.enabled(app_config):
            log.info("disabled (no [webapp] section, or enabled = false, in application.conf)")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            time.sleep(DISABLED_EXIT_DELAY_SEC)
            return 0
        settings = webapp_settings.WebappSettings.from_config(app_config)
        rabbitmq_config = get_rabbitmq_config()
    except ConfigError as exc:
        print(f"{SERVICE_NAME}: configuration error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from htmengine.repository import get_engine
    from htmengine.webapp.app import create_app
    from htmengine.webapp.context import WebappContext

    app = create_app(WebappContext(settings, get_engine(), rabbitmq_config))
    host = args.host or settings.host
    port = args.port or settings.port
    log.info("serving http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
