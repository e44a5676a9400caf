"""One module per ``costream`` subcommand."""
