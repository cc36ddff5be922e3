"""Warbler loadtest layer."""
