"""Prompt data: sources (packages, files), the hash held-out split, tokenization, suites.
Imports no model code."""
