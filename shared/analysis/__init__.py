"""Analysis both sides run: conformal calibration and its DP summaries, the open-set and
anomaly models, and explanations (the coordinator on public data, a site on its events).
The site-only analysis of a recording is :mod:`semiofed.client.analysis`."""
