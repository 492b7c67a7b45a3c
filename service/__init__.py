"""The REST service (FastAPI): search both ways, batch ingestion, health and metrics."""
