"""stackwatch: one Prometheus exporter for the things small platforms forget to watch."""

__version__ = "0.1.0"
