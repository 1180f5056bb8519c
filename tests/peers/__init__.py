"""Scripted telephone bridges, one wire per provider (see peers.base)."""
