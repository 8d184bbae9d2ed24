"""The test harness, apart from the tests (as pre-commit keeps ``testing/``): real Docker
engines with a GPU stand-in and ssh:// hosts (:mod:`testing.engines`), real systemd hosts
of Debian 12 and 13 (:mod:`testing.systemd_hosts`) and a fake GitHub API on loopback
(:mod:`testing.github_fake`). The tests and the benchmarks (``bench/hosts.py``) use it."""
