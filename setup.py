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
    install_requires=[
        "gevent>=23.9",
        "PyMySQL>=1.1",
        "cchardet>=2.1.7",
        "prometheus-client>=0.17",
        "setproctitle>=1.3",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "supervisor>=4.2",
                 # the inbox page in a real browser (tests/test_web_browser.py): Debian's chromium
                 # and chromium-driver, driven by Selenium (the version tested)
                 "selenium==4.51.0"],
    },
    entry_points={"console_scripts": ["gsmtpd = gsmtpd.cli:main"]},
)
