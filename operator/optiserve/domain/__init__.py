"""Pure decision logic of the operator: no I/O, no clocks, no Kubernetes, no HTTP.

Everything here is a function of its arguments, so it can be tested table-driven and replayed
offline. This package imports nothing from kopf, kubernetes or HTTP clients; the providers and
reconcilers that do I/O call into it, never the other way round.
"""
