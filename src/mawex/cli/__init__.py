"""The ``mawex`` command line; with :mod:`mawex.local`, the only place that wires things up."""
