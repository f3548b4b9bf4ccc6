"""Safety helpers for files: atomic writes and the ownership markers that decide what
capmodel may delete. Knows nothing of models or the application."""
