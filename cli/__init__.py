"""The ``quadvault`` command line: one module per command; commands only parse and call the library."""
