"""proofs_checks — every claim of the Vashista paper as an executable check."""
