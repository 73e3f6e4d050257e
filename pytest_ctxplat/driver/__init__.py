"""The load driver: the streaming HTTP client (the measured hot path), the session
runner that plays a workload's plans on a clock, and the multi-process mode."""
