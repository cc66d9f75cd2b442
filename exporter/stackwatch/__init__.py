"""stackwatch: one Prometheus exporter for the things small platforms forget to watch."""

__version__ = "0.2.0"
