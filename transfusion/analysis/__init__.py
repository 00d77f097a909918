"""Activations of named stages, captured by forward hooks into streaming CCA statistics, and
per-layer similarity between models (see similarity.py)."""
