"""htmengine's optional web tier: a JSON API in the spirit of HTM-IT's and a live dashboard.

Run as ``python -m htmengine.webapp`` (the ``webapp`` program of conf/supervisord-base.conf). It
reads MySQL through the repository layer, drives models through the custom datasource adapter,
puts posted graphite lines on the listener's data queue, and follows the results exchange through
its own queue to push new scores to the browsers.
"""
