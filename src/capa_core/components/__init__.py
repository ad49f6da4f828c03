"""Component implementations, one module per backend; drivers are imported lazily."""
