"""The imperative shell around the core: the engine loop, leadership and the result topic."""
