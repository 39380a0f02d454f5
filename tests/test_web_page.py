"""The web page at / in headless Chromium (Debian's chromium and chromedriver, driven by Selenium):
pick a collection, choose an image, see the ranked matches as thumbnails with scores."""

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from lookalike_client import Client
from tests.conftest import DATA

# Set to 1 to run the suite knowingly without the web page's test (skipped, with this reason).
OPT_OUT = "LOOKALIKE_TEST_WITHOUT_BROWSER"
NO_BROWSER = ("No Chromium here (chromium and chromedriver on PATH): `make test` installs Debian's chromium and "
              "chromium-driver where it can (root and apt-get); this machine could not. Install them, or set "
              f"{OPT_OUT}=1 to run the suite without testing the web page.")


def browser_paths() -> tuple[str, str]:
    """Chromium and its driver. Without them the web page's test fails rather than skips, so that a run
    that did not test the page cannot pass for green, unless the runner opted out (``OPT_OUT=1``)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and chromedriver:
        return chromium, chromedriver
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{OPT_OUT}=1: the web page is not tested (no Chromium here)")
    pytest.fail(NO_BROWSER, pytrace=False)


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.mark.parametrize("opt_out", [None, "0", "", "yes"])
def test_no_browser_fails_the_run_unless_opted_out(monkeypatch, opt_out):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if opt_out is None:
        monkeypatch.delenv(OPT_OUT, raising=False)
    else:
        monkeypatch.setenv(OPT_OUT, opt_out)
    with pytest.raises(pytest.fail.Exception, match=f"set {OPT_OUT}=1"):
        browser_paths()


def test_no_browser_skips_when_opted_out(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/chromium" if name == "chromium" else None)
    monkeypatch.setenv(OPT_OUT, "1")
    with pytest.raises(pytest.skip.Exception, match=f"{OPT_OUT}=1"):
        browser_paths()


def test_dropping_an_image_shows_ranked_thumbnails(api, collection, browser):
    client = Client(api.base_url)
    for name in ("rocket", "coffee", "moon"):
        client.result(client.index(collection, DATA / f"{name}.jpg", image_id=f"photos/{name}.jpg").task_id)

    client.set_collection(collection, kind="block")  # a block list: its answers carry a verdict

    browser.get(api.base_url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda _: collection in [option.text
                                        for option in Select(browser.find_element(By.ID, "collection")).options])
    Select(browser.find_element(By.ID, "collection")).select_by_visible_text(collection)
    file_input = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", file_input)  # what clicking the drop zone opens
    file_input.send_keys(str(DATA / "rocket.jpg"))

    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#matches li")) == 3)
    items = browser.find_elements(By.CSS_SELECTOR, "#matches li")
    assert [item.find_element(By.CLASS_NAME, "id").text for item in items][0] == "photos/rocket.jpg"
    scores = [float(item.find_element(By.CLASS_NAME, "score").text) for item in items]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=1e-3)
    assert "near" in items[0].get_attribute("class")
    wait.until(lambda _: all(browser.execute_script("return arguments[0].naturalWidth", image) > 0
                             for image in browser.find_elements(By.CSS_SELECTOR, "#matches img")))
    first = items[0].find_element(By.TAG_NAME, "img")
    assert first.get_attribute("src").startswith("blob:")
    assert browser.execute_script("return arguments[0].naturalWidth", first) == 96  # the stored thumbnail
    assert "3 matches; verdict: block" in browser.find_element(By.ID, "status").text


def test_errors_show_on_the_page(api, browser):
    browser.get(api.base_url + "/")
    WebDriverWait(browser, 30).until(
        lambda _: browser.find_element(By.ID, "collection").find_elements(By.TAG_NAME, "option"))
    file_input = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", file_input)
    file_input.send_keys(str(DATA / "make_images.py"))  # not an image
    WebDriverWait(browser, 30).until(lambda _: "unsupported_media_type" in browser.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"
