"""Safety helpers for files: atomic writes, the ownership markers that decide what capmodel
may delete, sets of files and whole directories replaced at once, the checks of a command's
outputs and the one JSON reader. Every rename and delete of capmodel is here
(tests/test_architecture.py). Knows nothing of models or the application."""
