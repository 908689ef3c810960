"""Serving stage: the Triton model repository and its deployment (assets.py, resources.py)."""
