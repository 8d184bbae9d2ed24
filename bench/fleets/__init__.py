"""What the suites compile and deploy: fleetform repositories and their kapitan twin."""
