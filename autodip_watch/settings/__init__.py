"""Settings: the daemon's configuration file, and the settings of denoise and calibrate."""
