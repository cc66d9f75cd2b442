"""Probe kinds (one module each), the contract they share (:mod:`.base`) and the helpers only
probes use (HTTP client and transport, SQL engines, JSON paths).

The list of kinds stackwatch runs is :mod:`stackwatch.kinds`.  Nothing in this package imports
anything above it except :mod:`stackwatch.config` (the config models), :mod:`stackwatch.redact`
and :mod:`stackwatch.durations`.
"""
