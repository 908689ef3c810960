"""Ingest: the catalogue, the users and the daily interactions, and ``daily_job``, the run of each new day (the
new-day sensor and the daily schedule that request it sit beside it)."""
