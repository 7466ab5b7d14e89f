"""The segments service: tags, computed traits and real-time segments."""
