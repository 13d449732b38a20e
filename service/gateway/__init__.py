"""The online gateway: FastAPI app, settings, caches, retrieval and the rerank orchestration."""
