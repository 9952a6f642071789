"""Clinic side: torch-free inference, local client update and the federation node."""
