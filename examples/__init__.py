"""Worked examples of consuming the bridge's topics."""
