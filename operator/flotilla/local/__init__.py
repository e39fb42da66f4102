"""The job as local processes: `flotilla run`."""
