"""Shared test support: helpers more than one test package needs (fixtures stay in conftest.py)."""
