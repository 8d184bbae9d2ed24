"""Processes the suites time or run beside the tools: the floor, stage timers, the probe."""
