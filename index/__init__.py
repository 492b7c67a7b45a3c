"""The two-level Hamming index: semantic buckets (level 1), FAISS binary scan inside them (level 2)."""
