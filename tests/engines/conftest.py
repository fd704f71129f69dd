"""Fixtures for tests against the real engines (clamd, spamd, rspamd), started
privately on loopback by the test setup itself; see the ``*_instance.py`` modules."""
