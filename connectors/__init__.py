"""costream.connectors."""
