"""One module per area registering its ``myco`` verbs; see :mod:`reconciler.cli`."""
