"""The study as a whole: the config's checks and plan, and the disk it needs."""
