"""Prometheus metrics for actions (the ``metrics`` extra: ``prometheus_client``).

``collectors`` holds the metrics: counters and histograms this process fills from the
lifecycle signals, and gauges read from the database at scrape time. ``views`` exposes
them as a view you mount behind your own authentication (``urls``). Nothing here is
imported by the rest of the package, so it works without ``prometheus_client``; the
view says what is missing when it is mounted without it.
"""
