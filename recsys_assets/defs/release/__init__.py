"""Releases: the Triton repository and its deployment, the daily (fine-tuned) and weekly (retrained) candidates,
the served release with its promotion and rollback, and the daily evaluation of the list as served."""
