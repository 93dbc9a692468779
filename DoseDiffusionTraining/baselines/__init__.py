"""Baselines that every accuracy claim is compared with."""
