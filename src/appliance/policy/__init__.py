"""Governance enforced in code: AI disclosure first and uninterruptible."""
