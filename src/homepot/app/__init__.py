"""Compatibility package for the spec's documented import paths."""
