"""Warbler storage layer."""
