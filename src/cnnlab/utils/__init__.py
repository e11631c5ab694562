"""Small helpers shared by every layer (atomic file writes, hardware facts)."""
