"""`distillspec serve`: the engine behind an OpenAI-compatible HTTP endpoint (FastAPI + uvicorn)."""
