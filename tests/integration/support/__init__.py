"""What the integration tests stand on: workers they start, PostgreSQL, the Django example."""
