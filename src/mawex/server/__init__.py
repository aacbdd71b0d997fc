"""Transport only: parse with :mod:`mawex.wire`, call the engine, render."""
