"""What the journeys service uses to reach the outside: the channel providers (`providers/`) that
deliver messages and the templates (`templates.py`) that render them."""
