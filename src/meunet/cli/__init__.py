"""The ``meunet`` command line: a thin layer over the library."""
