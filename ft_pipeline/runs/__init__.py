"""Run control shared by the command line and the Dagster edge: the home's locks, stale runs whose process is
gone and the gpu pool's lock file (`control`), and the terminal's stage lines (`console`)."""
