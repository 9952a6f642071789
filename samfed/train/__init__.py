"""In-process training of SAM-Fed and its baselines: runner, run directory, plots and reports."""
