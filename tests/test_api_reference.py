"""The API reference at /docs in headless Chromium (Swagger UI 5, served by the API itself): it renders the
OpenAPI document -- every operation listed, no "Unable to render this definition" -- and "Try it out" on
index_image uploads an image that the worker then indexes."""

import json
import time

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.conftest import DATA
from tests.test_web_page import browser_paths


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def test_the_reference_renders_and_try_it_out_indexes_an_image(api, collection, browser):
    document = requests.get(api.url("/openapi.json"), timeout=30).json()
    operation_ids = {operation["operationId"] for methods in document["paths"].values()
                     for operation in methods.values()}

    browser.get(api.url("/docs"))
    wait = WebDriverWait(browser, 60)
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, ".opblock"))
    assert "Unable to render" not in browser.page_source
    shown = {element.get_attribute("id").rsplit("-", 1)[-1]
             for element in browser.find_elements(By.CSS_SELECTOR, ".opblock")}
    assert shown == operation_ids, (shown ^ operation_ids)

    operation = browser.find_element(By.ID, "operations-images-index_image")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    operation.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    operation.find_element(By.CSS_SELECTOR, 'tr[data-param-name="collection"] input').send_keys(collection)
    form_field = 'tr[data-property-name="{}"] input'.format  # the multipart body's fields
    wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, form_field("image")))
    operation.find_element(By.CSS_SELECTOR, form_field("image")).send_keys(str(DATA / "rocket.jpg"))
    assert operation.find_element(By.CSS_SELECTOR, form_field("url")).get_attribute("value") == ""  # not "null"
    operation.find_element(By.CSS_SELECTOR, form_field("id")).send_keys("from/the/reference.jpg")
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()

    wait.until(lambda _: operation.find_elements(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"))
    status = operation.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status").text.strip()
    body = operation.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description pre").text
    assert status == "202", (status, body)
    accepted = json.loads(body)
    assert accepted["image_id"] == "from/the/reference.jpg"

    deadline = time.monotonic() + 120
    while (task := requests.get(api.url(accepted["status_url"]), params={"wait": 10}, timeout=30).json())["state"] \
            not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, task
    assert task["state"] == "succeeded", task
    assert requests.get(api.url(f"/v1/collections/{collection}/images/from/the/reference.jpg"),
                        timeout=30).status_code == 200
