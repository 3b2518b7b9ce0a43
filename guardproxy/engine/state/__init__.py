"""State shared between guardproxy instances (rates, bans, slots, budgets) and its Redis client."""
