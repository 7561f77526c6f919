"""Metrics: per-turn latency breakdown (observer) and call metadata without content."""
