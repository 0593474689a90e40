"""Test doubles: stand-ins for the GPU, its driver tools and other things a test host lacks."""
