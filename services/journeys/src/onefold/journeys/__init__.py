"""The journeys service: marketing journeys that contact people only the way they allowed."""
