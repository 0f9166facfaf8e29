"""Worker processes for psi's EC work: psi itself stays free of processes."""
