"""CLI commands, one module per verb. Each imports heavy dependencies inside the function body."""
