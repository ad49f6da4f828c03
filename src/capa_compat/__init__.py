"""Drop-in shims that keep legacy client interfaces and route them through capa_core."""
