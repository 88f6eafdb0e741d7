"""kdtrack."""
