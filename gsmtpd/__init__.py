"""gsmtpd: an inbound-only SMTP server that stores every message it accepts in MySQL or SQLite."""
__version__ = "0.1.0"
