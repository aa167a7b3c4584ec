"""The terminal, for the CLI and for anyone running mdp by hand: :mod:`.console` (the stdout and
stderr consoles, verbosity, colour, the log handler), :mod:`.tables` (the one table renderer),
:mod:`.progress` (the one progress line) and :mod:`.records` (bus entries, dead letters, stream
status and job runs as rows and JSON). Built on rich; nothing here imports the CLI."""
