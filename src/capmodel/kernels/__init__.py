"""Fast NumPy machinery under the models: packed recurrences, reused scratch buffers and
decoding in threads. Knows nothing of captions, files or the application."""
