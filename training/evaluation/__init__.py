"""The evaluation protocol every method and the index are judged by."""
