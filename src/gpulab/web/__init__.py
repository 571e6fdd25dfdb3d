"""The web UI: `gpulab serve` (FastAPI, in the `web` extra)."""
