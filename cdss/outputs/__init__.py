"""Renderings of an Assessment for the systems and people that consume it."""
