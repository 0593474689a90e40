"""Reusable pyinfra ``@deploy`` functions, one per component."""
