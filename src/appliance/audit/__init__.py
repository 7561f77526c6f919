"""Governance plane: encrypted, tamper-evident audit log."""
