"""Serving: the work queue and its workers, start-up and draining, metrics, JSON logs."""
