"""Warbler's shared pieces: ``warbler.config`` (Settings), ``warbler.errors``, ``warbler.protocol``.

Nothing is imported here, so the SDK (which needs only ``errors`` and ``protocol``) installs and
imports without pydantic-settings or Ray.
"""
