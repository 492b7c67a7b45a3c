"""Featurizers: raw text → bag-of-words, raw pixels → a deterministic image descriptor."""
