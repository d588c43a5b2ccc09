"""Offline evaluation of anomaly detectors (NAB). Reads benchmark files; not used by the services."""
