"""Locust load tests of the gateway: `python -m loadtests --help`, loadtests/locustfile.py."""
