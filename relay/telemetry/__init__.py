"""
What the relay tells its operators: Prometheus metrics, log formats, the
per-connection and per-transaction reports, the monitoring HTTP site
(C{/metrics}, C{/healthz}, C{/readyz}) and usage accounting.
"""
