"""The model registry: signed, versioned models with privacy-aware model cards.

``db`` (schema and migrations), ``storage`` (artifacts on disk), ``auth`` (role tokens),
``cards`` (model cards from a run directory), ``publish`` (signing and registering a
version), ``app`` (the FastAPI service) and ``web`` (the server-rendered pages).
"""
