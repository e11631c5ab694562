"""The web service (FastAPI): ``create_app(run_dir)``; ``cnnlab serve`` runs it with uvicorn."""
