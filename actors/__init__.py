"""Warbler actors layer."""
