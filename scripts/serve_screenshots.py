"""The README's screenshots of `starlora serve`, on the embedded model and real data.

A star-me project over embedded SST-2 (200 reviews to label, 100 held out, the sst2 protocol's training values);
rounds 0 and 1 are queried, labeled from the gold answers and trained through the library, as a person with the
commands would; round 2 goes through the page in headless Chromium (Debian's chromium and chromium-driver):
the label screen with the model's guess shown, the train screen while training runs, and the learning curve after.

    .venv/bin/python scripts/serve_screenshots.py docs/serve     (a few minutes on 2 cores)
"""

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from starlora import project as P
from starlora.cli import main
from starlora.data import embedded_rows
from starlora.serve import create_app


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def answer_all(proj, gold):
    for i in P.open_project(proj).queries()[-1]["ids"]:
        P.label_one(proj, i, gold[i])


def main_(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="starlora-screens-"))
    pool, test = embedded_rows("sst2")
    pool, test = [r for _, r in pool[:200]], [r for _, r in test[:100]]
    gold = {r["id"]: r["answer"] for r in pool}
    write_jsonl(work / "reviews.jsonl", [{k: v for k, v in r.items() if k != "answer"} for r in pool])
    write_jsonl(work / "heldout.jsonl", test)
    proj = work / "reviews"
    assert (
        main(
            [
                "init",
                str(proj),
                "--task",
                "sst2",
                "--pool",
                str(work / "reviews.jsonl"),
                "--test",
                str(work / "heldout.jsonl"),
                "--template",
                "Review: {sentence}\nSentiment:",
                "--strategy",
                "star-me",
                "--rounds",
                "6",
                "--epochs",
                "3",
                "--lr",
                "1e-3",
                "--lora-r",
                "16",
            ]
        )
        == 0
    )
    for _ in range(2):
        P.query(proj, 8)
        answer_all(proj, gold)
        P.train(proj)
    P.query(proj, 8)

    server = uvicorn.Server(uvicorn.Config(create_app(proj), host="127.0.0.1", port=8766, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    wait = WebDriverWait(browser, 900, poll_frequency=0.2)
    text = lambda id_: browser.find_element(By.ID, id_).text  # noqa: E731
    try:
        browser.get("http://127.0.0.1:8766/")
        wait.until(lambda _: "Round 2 · 0 of 8 labeled" in text("label-progress"))
        body = browser.find_element(By.TAG_NAME, "body")
        for _ in range(3):  # three labels by keyboard, then the screen as the fourth example waits
            current = text("example-id").removeprefix("id ")
            labeled = text("label-progress")
            body.send_keys("1" if gold[current] == "negative" else "2", "\n")
            wait.until(lambda _: text("label-progress") != labeled)
        browser.find_element(By.ID, "show-guess").click()
        browser.save_screenshot(str(out / "label.png"))
        answer_all(proj, gold)  # the rest, as a second labeler would
        wait.until(lambda _: "Every example" in text("label-empty"))
        browser.find_element(By.ID, "tab-round").click()
        browser.find_element(By.ID, "train").click()
        wait.until(
            lambda _: (
                "round 2 training" in text("job-text")
                and int(browser.find_element(By.ID, "job-bar").get_attribute("value") or 0) >= 3
            )
        )
        browser.save_screenshot(str(out / "train.png"))
        wait.until(lambda _: "adapter trained" in text("round-message"))
        browser.find_element(By.ID, "tab-curve").click()
        wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#curve circle.point")) == 3)
        browser.save_screenshot(str(out / "curve.png"))
    finally:
        browser.quit()
        server.should_exit = True
    print(f"screenshots in {out}; the project is {proj}")


if __name__ == "__main__":
    main_(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/serve"))
