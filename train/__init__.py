"""The training program (``python -m train.main``); it imports the library, never ``analysis/``."""
