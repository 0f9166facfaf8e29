"""xmatch: the command line, the embedded demo and the benchmark runner."""
