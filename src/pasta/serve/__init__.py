"""`pasta serve`: an OpenAI-compatible HTTP server with cross-request batching of asynchronous decoding."""
