"""blobledger."""
