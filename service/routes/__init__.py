"""API routes: search (both directions), items (batch ingest, get, delete), system (models, health)."""
