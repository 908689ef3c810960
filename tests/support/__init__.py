"""Shared set-up of the reliability suite and the load benchmark (real services, no mocks)."""
