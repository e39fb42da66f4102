"""The exit statuses of `flotilla` commands."""

EXIT_JOB_FAILED = 1  # the job (or what the command was asked to do) failed
EXIT_USAGE = 2  # bad arguments or an invalid job spec, as argparse's own errors
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
