"""Warbler client layer."""
