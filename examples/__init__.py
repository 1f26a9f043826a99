"""Examples of clients of the fleet."""
