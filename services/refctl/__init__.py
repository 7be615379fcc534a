"""refctl: the one command-line tool for operators and partners."""
