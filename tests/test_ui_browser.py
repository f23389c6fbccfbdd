"""``tm ui`` in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed
by the test setup when missing; see tests/browser.py) driven by selenium, against a uvicorn server
on a free loopback port over a real SQLite store: the runs page, a run followed live from running
to completed, a schedule paused and triggered from the page, a failed task's traceback.
Screenshots of the main pages go to ``artifacts/ui/`` (not committed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("selenium")

import browser
from _ui_server import serving
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_scheduler import WAIT
from test_ui import EVIL, build_store

import tm
from tm import Executor, Graph, task
from tm.ui import create_app

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "ui"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    w = build_store(tmp_path_factory.mktemp("ui_browser") / "tm.db")
    yield w
    w["store"].close()


@pytest.fixture(scope="module")
def base_url(world: dict[str, Any]) -> Iterator[str]:
    with serving(create_app(world["url"])) as url:
        yield url


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = browser.ensure_installed()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    d = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    d.set_page_load_timeout(WAIT * 3)
    try:
        yield d
    finally:
        d.quit()


def wait(d: webdriver.Chrome, cond: Any) -> Any:
    # A page redrawn while a condition looks at it (the live run reloads once it ends).
    return WebDriverWait(
        d, WAIT * 3, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    ).until(cond)


def shot(d: webdriver.Chrome, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_runs_page_lists_the_runs(driver: webdriver.Chrome, base_url: str, world: dict) -> None:
    driver.get(base_url + "/")
    rows = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tr.run"))
    assert [r.get_attribute("data-run") for r in rows] == [
        world["evil"],
        world["failed"],
        world["ok"],
    ]
    shot(driver, "runs")
    # The filter form narrows the list.
    driver.get(base_url + "/?state=failed")
    rows = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tr.run"))
    assert [r.get_attribute("data-run") for r in rows] == [world["failed"]]


def test_a_run_is_followed_live_from_running_to_completed(
    driver: webdriver.Chrome, base_url: str, world: dict
) -> None:
    store = tm.Store(world["url"])
    ex = Executor(store=store)
    gate = threading.Event()
    g = Graph("live")

    @task
    def blocked():
        assert gate.wait(WAIT * 3)

    @task
    def then(blocked):
        return 1

    g.add(blocked)
    g.add(then, blocked)
    run = ex.submit(g)
    try:
        store.flush()  # the run and its task rows are committed before the page reads them
        driver.get(f"{base_url}/runs/{run.id}")
        state = wait(driver, lambda d: d.find_element(By.ID, "run-state"))
        assert state.text == "running"
        # The task not yet run is drawn too.
        assert "s-pending" in driver.find_element(
            By.CSS_SELECTOR, "g.node[data-node='1'] rect"
        ).get_attribute("class")
        gate.set()
        wait(driver, lambda d: d.find_element(By.ID, "run-state").text == "completed")
        wait(
            driver,
            lambda d: all(
                "s-completed" in (r.get_attribute("class") or "")
                for r in d.find_elements(By.CSS_SELECTOR, "g.node rect")
            ),
        )
        # The ended run is drawn again whole: both attempts on the timeline, no live script.
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gantt rect")) == 2)
        assert driver.find_elements(By.ID, "live") == []
        cells = driver.find_elements(By.CSS_SELECTOR, "#tasks td.status")
        assert [c.text for c in cells] == ["completed", "completed"]
        shot(driver, "run")
    finally:
        gate.set()
        run.wait()
        ex.shutdown()
        store.close()


def test_pause_and_trigger_a_schedule_from_the_page(
    driver: webdriver.Chrome, base_url: str, world: dict
) -> None:
    store = world["store"]
    driver.get(base_url + "/graphs")
    row = "tr.graph[data-graph='hourly']"
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"{row} button"))
    driver.find_element(By.XPATH, "//tr[@data-graph='hourly']//button[text()='Pause']").click()
    wait(
        driver,
        lambda d: d.find_elements(By.XPATH, "//tr[@data-graph='hourly']//button[text()='Unpause']"),
    )
    assert [p[0] for p in store.core.pauses()] == ["hourly"]
    shot(driver, "graphs")
    driver.find_element(By.XPATH, "//tr[@data-graph='hourly']//button[text()='Unpause']").click()
    wait(
        driver,
        lambda d: d.find_elements(By.XPATH, "//tr[@data-graph='hourly']//button[text()='Pause']"),
    )
    assert store.core.pauses() == []
    driver.find_element(By.XPATH, "//tr[@data-graph='hourly']//button[text()='Trigger']").click()
    wait(driver, lambda d: d.current_url.endswith("/graphs"))
    assert store.core.triggered_graphs() == ["hourly"]


def test_open_a_failed_tasks_traceback(
    driver: webdriver.Chrome, base_url: str, world: dict
) -> None:
    driver.get(f"{base_url}/runs/{world['failed']}")
    # The task table's link (the graph's node links to the table row).
    wait(
        driver, lambda d: d.find_element(By.XPATH, "//a[@class='task-link'][text()='explode']")
    ).click()
    tb = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "pre.traceback"))
    assert "ValueError: boom <b>bold</b>" in tb.text  # the markup shows as text
    assert 'raise ValueError("boom <b>bold</b>")' in tb.text
    shot(driver, "task")


def test_markup_in_names_and_logs_stays_text_in_the_browser(
    driver: webdriver.Chrome, base_url: str, world: dict
) -> None:
    driver.get(f"{base_url}/runs/{world['evil']}/tasks/0")
    logs = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#logs td.log"))
    assert [c.text for c in logs] == [f"log line {EVIL}"]
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Task {EVIL}"
    # Nothing ran: no script element came from the store, and no alert is open.
    assert driver.execute_script("return document.scripts.length") == 0
    assert driver.execute_script("return typeof window.alert") == "function"
