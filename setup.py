from setuptools import find_packages, setup

setup(
    name="gsmtpd",
    version="0.1.0",
    description="Inbound-only SMTP server that stores every message it accepts in MySQL or SQLite",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    packages=find_packages(include=["gsmtpd", "gsmtpd.*"]),
    package_data={"gsmtpd": ["schema.sql"], "gsmtpd.web": ["openapi.json", "static/*"]},
    python_requires=">=3.11",
    # Pinned to the tested range: the lower bounds are the oldest releases we support, the
    # upper bounds the next minor (major for gevent's calendar versions) that no test has run
    # against. gsmtpd leans on private internals of gevent and PyMySQL for speed (see
    # gevent_adapter.py, pymysql_adapter.py), which a new release may change without notice. Tested
    # with gevent 26.9.0, PyMySQL 1.2.4, cchardet 2.4.1, prometheus-client 0.26.0,
    # setproctitle 1.3.8 (and pytest 9.0.3, pytest-timeout 2.4.0, hypothesis 6.155.2,
    # supervisor 4.3.0) on CPython 3.11.
    install_requires=[
        "gevent>=23.9,<27",
        "PyMySQL>=1.1.1,<1.3",          # 1.1.1 fixes CVE-2024-36039 (JSON keys as SQL)
        "cchardet>=2.1.7,<2.5",
        "prometheus-client>=0.17,<0.27",
        "setproctitle>=1.3,<1.4",
    ],
    extras_require={
        "test": ["pytest>=7,<10", "pytest-timeout>=2,<3", "hypothesis>=6,<7", "supervisor>=4.2,<5",
                 # the inbox page in a real browser (tests/test_web_browser.py): Debian's chromium
                 # and chromium-driver, driven by Selenium (4.52 needs a newer certifi than the
                 # package index has; the version tested)
                 "selenium==4.51.0"],
    },
    entry_points={"console_scripts": ["gsmtpd = gsmtpd.cli:main"]},
)
