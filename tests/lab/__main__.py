"""`python -m tests.lab ...`: see tests/lab/lab.py."""

from .lab import main

raise SystemExit(main())
