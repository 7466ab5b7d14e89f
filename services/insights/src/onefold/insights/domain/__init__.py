"""What insights computes, stated without a database: the specifications of its analyses and their checks."""
