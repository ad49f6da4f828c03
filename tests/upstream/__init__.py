"""Fidelity: legacy libraries' own test suites, from their sdists, run against the shims."""
