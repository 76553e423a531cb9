"""The chat page of `pseudocot serve`, driven in a real headless browser (Debian's chromium + chromedriver).

The `live_server` fixture (tests/conftest.py) runs the server on a tiny arithmetic run and requires an API
key. One browser serves the whole module. The page is `src/pseudocot/serve/static/index.html`; the ids
and classes waited on here are listed at the top of that file.

A screenshot of the answered question is saved to `test-artifacts/serve-page.png` (repo root), or to the
folder named by the environment variable PSEUDOCOT_TEST_ARTIFACTS.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
QUESTION = "Mia has 5 apples. She gets 3 more apples. How many apples does Mia have now?"
ANSWER_TIMEOUT_S = 60
PAGE_TIMEOUT_S = 15


def _artifacts_dir() -> Path:
    folder = Path(os.environ.get("PSEUDOCOT_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    """A headless chromium driven by the system chromedriver (never Selenium Manager, which would go online)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"the browser test needs {' and '.join(missing)}: run `make test`, which installs chromium and chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f"the browser test needs selenium ({e}): run `make test`, which installs it")

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open_fresh(driver, url: str) -> None:
    """Loads the page with nothing remembered from an earlier test (key, mode)."""
    driver.get(url + "/")
    driver.execute_script("window.localStorage.clear();")
    driver.get(url + "/")


def _text(element) -> str:
    """The element's text, also when it sits in a collapsed <details> (WebDriver's .text is visible text only)."""
    return (element.get_attribute("textContent") or "").strip()


def _enter_key(driver, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key, Keys.TAB)  # leaving the field commits the key (change event)


def _ask(driver, question: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question, Keys.ENTER)


def test_page_streams_thoughts_answer_and_cost(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _open_fresh(browser, live_server.url)
    _enter_key(browser, live_server.api_key)
    # The mode list is fetched again with the key; wait for the mode that always thinks.
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#mode option[value="pseudocot-always"]'),
                                                 message="the mode picker never listed pseudocot-always")
    Select(browser.find_element(By.ID, "mode")).select_by_value("pseudocot-always")
    assert not browser.find_element(By.ID, "notice").is_displayed(), _text(browser.find_element(By.ID, "notice"))

    _ask(browser, QUESTION)

    def finished(d):
        turns = d.find_elements(By.CSS_SELECTOR, ".turn.assistant")
        return turns and turns[-1].get_attribute("data-state") != "streaming" and turns[-1]

    turn = WebDriverWait(browser, ANSWER_TIMEOUT_S).until(finished, message="the answer never finished streaming")
    errors = [_text(e) for e in turn.find_elements(By.CSS_SELECTOR, ".error")]
    assert turn.get_attribute("data-state") == "done", errors

    thoughts = [_text(t) for t in turn.find_elements(By.CSS_SELECTOR, ".thoughts .thought")]
    assert thoughts and all(thoughts), thoughts
    assert _text(turn.find_element(By.CSS_SELECTOR, ".answer"))
    cost = _text(turn.find_element(By.CSS_SELECTOR, ".cost"))
    assert "thought call" in cost and "tokens" in cost, cost
    assert "thought" in _text(turn.find_element(By.CSS_SELECTOR, ".thoughts summary")).lower()
    # The question stays in the conversation, as a user turn.
    assert _text(browser.find_elements(By.CSS_SELECTOR, ".turn.user .body")[-1]) == QUESTION

    # Expand the (collapsed once done) thinking block so the screenshot shows it.
    details = turn.find_element(By.CSS_SELECTOR, "details.thoughts")
    if details.get_attribute("open") is None:
        details.find_element(By.TAG_NAME, "summary").click()
    assert browser.save_screenshot(str(_artifacts_dir() / "serve-page.png"))


def test_page_reports_a_wrong_key(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open_fresh(browser, live_server.url)
    _enter_key(browser, live_server.api_key + "-wrong")

    notice = browser.find_element(By.ID, "notice")
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(lambda d: notice.is_displayed() and "refused" in notice.text,
                                                 message="no notice about the refused key")
    assert "API key" in notice.text

    _ask(browser, QUESTION)
    turn = WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: (t := d.find_elements(By.CSS_SELECTOR, ".turn.assistant")) and t[-1].get_attribute("data-state") != "streaming" and t[-1],
        message="the page hung instead of showing the 401",
    )
    assert turn.get_attribute("data-state") == "error"
    error = turn.find_element(By.CSS_SELECTOR, ".error")
    assert error.is_displayed() and "401" in error.text and "API key" in error.text, error.text
    # The unanswered question is offered again.
    assert browser.find_element(By.ID, "question").get_attribute("value") == QUESTION
