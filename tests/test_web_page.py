"""The web page at / in headless Chromium (Debian's chromium and chromedriver, driven by Selenium):
pick a collection, choose an image, see the ranked matches as thumbnails with scores."""

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from api.client import Client
from tests.conftest import DATA

NO_BROWSER = ("No Chromium here: `make test` installs Debian's chromium and chromium-driver where it can "
              "(root and apt-get); this machine could not, so the web page is not tested.")


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip(NO_BROWSER)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def test_dropping_an_image_shows_ranked_thumbnails(api, collection, browser):
    client = Client(api.base_url)
    for name in ("rocket", "coffee", "moon"):
        client.result(client.index(collection, DATA / f"{name}.jpg", image_id=f"photos/{name}.jpg").task_id)

    browser.get(api.base_url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda _: collection in [option.text for option in Select(browser.find_element(By.ID, "collection")).options])
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
    WebDriverWait(browser, 30).until(lambda _: browser.find_element(By.ID, "collection").find_elements(By.TAG_NAME, "option"))
    file_input = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", file_input)
    file_input.send_keys(str(DATA / "make_images.py"))  # not an image
    WebDriverWait(browser, 30).until(lambda _: "unsupported_media_type" in browser.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"
