"""Composition roots: the ``serve`` process and the ``call`` client."""
