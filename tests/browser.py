"""Debian's chromium, headless, driven by Selenium with Debian's chromedriver (nothing downloaded), with the
network cut: it resolves no host name but 127.0.0.1, and its log keeps every request a page makes."""
from __future__ import annotations

import json
import shutil

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def chromium(width: int = 1500, height: int = 1300):
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={width},{height}",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):   # offline but for this machine
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})      # every request the pages make
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))


def requests_made(browser) -> list[str]:
    """The addresses the browser asked for since the last look."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
