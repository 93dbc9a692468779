"""Metrics on dose distributions: DVH, dose metrics, scorecards, evaluation against a reference."""
