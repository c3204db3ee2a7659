# Crash tests (internal/crashtest): Debian's nats-server runs as a separate
# process that the broker-fault test kills and restarts mid-stream.
apt_install nats-server
