"""Nothing lost: resume, signals, locks, full disks, divergence, refused launches."""
