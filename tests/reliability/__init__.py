"""Fault injection and load: every 250 is a committed row, through crashes, database outages
and overload. ``loadclient`` sends and checks, ``mariadb`` is a throwaway server the tests may
stop, ``scenarios`` holds the scenarios that the tests here and ``bench/reliability.py`` run."""
