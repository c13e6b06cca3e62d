"""Programs that turn weights, runs and checkpoint series into tables and figures; they import the library,
never ``train/``."""
