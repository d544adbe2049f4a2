"""`starlora serve` in a real browser: headless Chromium (Debian's chromium and chromium-driver) through a whole round
on the tiny model: query, label with the keyboard (skip, undo, the model's guess), train while watching the progress
bar, a second click on train, the learning curve, predict the rest, the next query; then the files on disk and the
commands.

Skipped when Chromium is not installed, unless STARLORA_REQUIRE_BROWSER=1 (as .ci/run sets): then it fails.
STARLORA_SCREENSHOTS=DIR keeps the screenshots of the three screens there (the README's come from this test)."""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_serve import GOLD, free_port, make_project  # noqa: E402

from starlora import project as P  # noqa: E402
from starlora.cli import main  # noqa: E402
from starlora.serve import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("STARLORA_REQUIRE_BROWSER"):
            pytest.fail("STARLORA_REQUIRE_BROWSER is set but chromium / chromedriver are not installed")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,820"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))  # no Selenium Manager download
    yield driver
    driver.quit()


@pytest.fixture
def held_training(monkeypatch):
    """An event: training (in this process) halts half-way until it is set, so the test can watch the progress bar
    and click train again however fast the machine is."""
    import starlora.progress

    release = threading.Event()

    class Held(starlora.progress.tqdm):
        def update(self, n=1):
            done = super().update(n)
            # (a quiet bar, predict's inner ones, has no desc)
            if "training" in str(getattr(self, "desc", "")) and self.n >= (self.total or 0) // 2:
                release.wait(120)
            return done

    monkeypatch.setattr(starlora.progress, "tqdm", Held)
    yield release
    release.set()


@pytest.fixture
def server(tmp_path):
    """The page over a fresh project, served by uvicorn in this process on a free port."""
    import uvicorn

    proj = make_project(tmp_path, "--epochs", "4")
    config = uvicorn.Config(create_app(proj), host="127.0.0.1", port=free_port(), log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started:
        time.sleep(0.05)
    yield proj, f"http://127.0.0.1:{config.port}/"
    running.should_exit = True
    thread.join(timeout=30)


def test_a_whole_round_in_the_browser(browser, server, held_training, tmp_path):
    proj, url = server
    shots = Path(os.environ.get("STARLORA_SCREENSHOTS") or tmp_path / "screens")
    shots.mkdir(parents=True, exist_ok=True)
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    text = lambda id_: browser.find_element(By.ID, id_).text  # noqa: E731
    visible = lambda id_: browser.find_element(By.ID, id_).is_displayed()  # noqa: E731
    keys = lambda k: browser.find_element(By.TAG_NAME, "body").send_keys(k)  # noqa: E731

    browser.get(url)
    wait.until(lambda _: "No query yet" in text("label-progress"))
    # query the first batch from the page
    browser.find_element(By.ID, "tab-round").click()
    n = browser.find_element(By.ID, "query-n")
    n.clear()
    n.send_keys("4")
    browser.find_element(By.ID, "query").click()
    browser.find_element(By.ID, "tab-label").click()
    wait.until(lambda _: text("label-progress") == "Round 0 · 0 of 4 labeled")
    asked = P.open_project(proj).queries()[0]["ids"]
    shown = lambda: browser.find_element(By.ID, "example-id").text.removeprefix("id ")  # noqa: E731
    assert shown() == asked[0] and "Is item" in text("prompt")
    assert not visible("guess")  # hidden by default, against anchoring
    browser.find_element(By.ID, "show-guess").click()
    assert visible("guess") and "The model's guess: " in text("guess")
    browser.save_screenshot(str(shots / "label.png"))

    keys("s")  # skip: the next example comes, the skipped one returns at the end
    wait.until(lambda _: shown() == asked[1])
    order = []
    for k in range(4):
        current = shown()
        keys("1" if GOLD[current] == "true" else "2")  # candidates: 1 true, 2 false
        wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "button.choice.selected"))
        keys("\n")
        wait.until(lambda _, k=k: text("label-progress") == f"Round 0 · {k + 1} of 4 labeled")
        order.append(current)
        if k == 1:  # undo the second label: it comes back, and is labeled again
            keys("u")
            wait.until(lambda _: text("label-progress") == "Round 0 · 1 of 4 labeled" and shown() == current)
            assert current not in {r["id"] for r in P.open_project(proj).labels()}
            keys("1" if GOLD[current] == "true" else "2")
            keys("\n")
            wait.until(lambda _: text("label-progress") == "Round 0 · 2 of 4 labeled")
    assert order == asked[1:] + asked[:1]  # the skipped one came last
    wait.until(lambda _: "Every example of round 0's query is labeled" in text("label-empty"))

    # train, watch the progress bar, and click train again while it runs
    browser.find_element(By.ID, "tab-round").click()
    browser.find_element(By.ID, "train").click()
    wait.until(lambda _: visible("job-card") and "round 0 training" in text("job-text"))
    bar = browser.find_element(By.ID, "job-bar")
    total = int(bar.get_attribute("max"))
    assert (
        total >= 4 and int(bar.get_attribute("value")) == total // 2 and f"{total // 2} of {total}" in text("job-text")
    )
    browser.save_screenshot(str(shots / "train.png"))
    browser.find_element(By.ID, "train").click()
    wait.until(lambda _: "training is already running" in text("round-message"))
    browser.find_element(By.ID, "tab-label").click()  # the page stays usable meanwhile
    assert "Every example of round 0's query is labeled" in text("label-empty") and visible("job-card")
    browser.find_element(By.ID, "tab-round").click()
    held_training.set()
    wait.until(lambda _: not visible("job-card"))
    wait.until(lambda _: "adapter trained on 4 labels" in text("round-message"))
    # the learning curve
    browser.find_element(By.ID, "tab-curve").click()
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#curve circle.point")) == 1)
    accuracy = json.loads((proj / "adapters" / "round_0" / "train.json").read_text())["accuracy"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#rounds-table tbody tr")
    assert rows[0].text.split() == ["0", "4", "4", "4", f"{accuracy:.1f}%"]
    browser.save_screenshot(str(shots / "curve.png"))

    # predict the rest: a background job like training, then the two downloads
    browser.find_element(By.ID, "tab-round").click()
    assert not visible("download-csv")
    browser.find_element(By.ID, "predict").click()
    wait.until(lambda _: visible("download-csv") and "for 26 unlabeled examples" in text("predict-note"))
    assert browser.find_element(By.ID, "download-jsonl").get_attribute("href") == url + "api/predictions.jsonl"
    assert len((proj / "predictions" / "unlabeled.csv").read_text().splitlines()) == 27

    # the next batch, mixed with lambda(0) = 0.667
    assert "0.667" in text("lambda")
    browser.find_element(By.ID, "query").click()  # n is still 4
    browser.find_element(By.ID, "tab-label").click()
    wait.until(lambda _: text("label-progress") == "Round 1 · 0 of 4 labeled")

    # on disk, exactly what the commands would have written
    project = P.open_project(proj)
    labels = project.labels()
    assert [(r["id"], r["answer"], r["round"]) for r in labels] == [(i, GOLD[i], 0) for i in order]
    assert len(project.adapters()) == 1 and len(project.queries()) == 2
    assert "lambda 0.667" in project.queries()[1]["how"]
    # and the commands carry on from there; the page follows
    second = project.queries()[1]["ids"]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "answer": GOLD[i]}) + "\n" for i in second))
    assert main(["label", str(proj), str(answers)]) == 0
    wait.until(lambda _: "Every example of round 1's query is labeled" in text("label-empty"))
    logged = browser.get_log("browser")  # no script errors; the one refused request is the second train click
    assert [e for e in logged if e["source"] != "network"] == [] and [e["message"].split(" - ")[0] for e in logged] == [
        url + "api/train"
    ]
    assert all((shots / f"{name}.png").stat().st_size > 10_000 for name in ("label", "train", "curve"))
