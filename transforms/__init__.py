"""costream.transforms."""
