"""The REST service (FastAPI): search both ways, batch ingestion, health and metrics."""

import os

# Each request thread makes its own small FAISS calls; an OpenMP team per call only adds start-up and
# spin-wait cost (measured: routing over 64 centers took 15 % of a query's CPU). OMP_NUM_THREADS is read
# when FAISS loads its OpenMP runtime and, unlike omp_set_num_threads, applies to every thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
