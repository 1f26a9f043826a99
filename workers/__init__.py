"""Celery workers that each host one vLLM engine shared by all their in-flight requests."""
