"""Talking to the LLM: the vLLM OpenAI-compatible server and how to start one locally."""
