"""dynaconf's own tests run with its settings classes replaced by capa_compat.dynaconf."""
