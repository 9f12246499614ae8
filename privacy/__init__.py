"""Privacy of SemioFed: ε accounting and ledger, keys and signing, audit trail, approvals, audits.

Layering: imports only ``semiofed.shared``.
"""
