"""costream.models."""
