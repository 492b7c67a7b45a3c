"""Cross-modal hashing methods, one module per paper."""
