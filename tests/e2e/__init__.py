"""End to end: the runner's whole pipeline from its command line, as a user runs it (and kills it)."""
