"""Shared code of SemioFed: recording format, labels, synthetic consortium, data, models, metrics.

Layering: this package imports none of ``semiofed.client``, ``semiofed.server`` or
``semiofed.privacy``.
"""
