"""Warbler serve layer."""
