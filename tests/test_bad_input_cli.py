"""Issue 24, every bad input gets one line: each case below exits 2 with one `starlora: error: ...` line on stderr
naming the option or file at fault, and no traceback (the serve API answers 413; help texts say what is true)."""

import json
import socket
import subprocess
import sys

import pytest
from test_report import fake_run

from starlora.cli import main
from starlora.config import PROTOCOLS
from starlora.tasks import BUILTIN


def one_line_error(capsys, code, *names):
    """The command exited 2 with one `starlora: error:` line naming each of names; returns (line, stdout)."""
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out
    assert len(lines) == 1 and lines[0].startswith("starlora: error: "), out.err
    assert "Traceback" not in out.err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0], out.out


def pool_files(folder):
    (folder / "p.jsonl").write_text(
        "".join(json.dumps({"question": f"is {i} even", "answer": ["true", "false"][i % 2]}) + "\n" for i in range(6))
    )
    (folder / "t.jsonl").write_text(
        "".join(json.dumps({"question": f"is {i} odd", "answer": ["false", "true"][i % 2]}) + "\n" for i in range(4))
    )
    return folder / "p.jsonl", folder / "t.jsonl"


def tiny_run_args(tmp_path, *extra):
    pool, test = pool_files(tmp_path)
    return [
        "run",
        "--model",
        "tiny-random",
        "--task",
        "boolq",
        "--train-file",
        str(pool),
        "--test-file",
        str(test),
        "--init-size",
        "2",
        "--query-size",
        "2",
        "--rounds",
        "1",
        "--probe-size",
        "0",
        "--fewshot",
        "0",
        "--out",
        str(tmp_path / "r"),
        *extra,
    ]


def make_project(tmp_path):
    pool, test = pool_files(tmp_path)
    assert (
        main(
            [
                "init",
                str(tmp_path / "proj"),
                "--task",
                "boolq",
                "--pool",
                str(pool),
                "--test",
                str(test),
                "--model",
                "tiny-random",
            ]
        )
        == 0
    )
    return tmp_path / "proj"


# ---------------------------------------------------------------- 1. a malformed --template


TEMPLATES = ["{text", "{0}", "{}", "{text!z}", "{question!z}", "{text:zz}", "{question:zz}", "Q: {question} }"]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("command", ["run --dry-run", "run", "init", "eval"])
def test_a_malformed_template_is_refused_up_front_naming_template(tmp_path, capsys, command, template):
    pool, test = pool_files(tmp_path)
    if command.startswith("run"):
        args = tiny_run_args(tmp_path, *command.split()[1:])
    elif command == "init":
        args = ["init", str(tmp_path / "proj"), "--task", "boolq", "--pool", str(pool), "--model", "tiny-random"]
    else:
        args = ["eval", "--task", "boolq", "--test-file", str(test), "--model", "tiny-random"]
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line_error(capsys, main([*args, "--template", template]), "--template", repr(template))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_template_with_a_format_spec_for_numbers_is_kept(tmp_path, capsys):
    """A spec a number takes ({question:>5} any value, {n:03d} a number) is not refused up front; a row it cannot
    fill is one line naming the file and line."""
    (tmp_path / "t.jsonl").write_text(
        json.dumps({"n": 5, "question": "q", "answer": "true"})
        + "\n"
        + json.dumps({"n": "x", "question": "q", "answer": "true"})
        + "\n"
    )
    code = main(
        [
            "eval",
            "--task",
            "boolq",
            "--test-file",
            str(tmp_path / "t.jsonl"),
            "--model",
            "tiny-random",
            "--template",
            "{n:03d} {question:>5}",
        ]
    )
    one_line_error(capsys, code, "t.jsonl:2", "cannot be filled")


# ---------------------------------------------------------------- 2. report --out naming a file


def test_report_out_naming_a_file_is_one_line(tmp_path, capsys):
    run = fake_run(tmp_path / "run", "random", 0, [50, 60])
    (tmp_path / "out.md").write_text("keep me")
    one_line_error(
        capsys, main(["report", str(run), "--out", str(tmp_path / "out.md")]), "--out", "out.md", "is a file"
    )
    assert (tmp_path / "out.md").read_text() == "keep me"
    one_line_error(
        capsys, main(["report", str(run), "--out", str(tmp_path / "out.md" / "sub")]), "--out", "cannot create a folder"
    )


# ---------------------------------------------------------------- 3. serve: port, busy port, host, 0.0.0.0


@pytest.fixture
def no_server(monkeypatch):
    """Whatever serve() would start fails the test instead of serving forever."""
    pytest.importorskip("uvicorn")

    def started(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr("uvicorn.run", started)
    monkeypatch.setattr("uvicorn.Server.run", started)
    monkeypatch.setattr("starlora.serve.run_server", started, raising=False)


@pytest.mark.parametrize(
    "option",
    [
        ["--port", "99999"],
        ["--port", "-1"],
        ["--host", "999.1.1.1"],
        ["--host", "no-such-host.invalid"],
        ["--host", "192.0.2.7"],
    ],
)
def test_serve_refuses_a_bad_port_or_host_before_printing_a_url(tmp_path, capsys, no_server, option):
    proj = make_project(tmp_path)
    capsys.readouterr()
    line, out = one_line_error(capsys, main(["serve", str(proj), *option]), f"{option[0]} {option[1]}")
    assert "http://" not in out


def test_serve_refuses_a_busy_port(tmp_path, capsys, no_server):
    proj = make_project(tmp_path)
    capsys.readouterr()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line, out = one_line_error(capsys, main(["serve", str(proj), "--port", str(port)]), f"--port {port}", "in use")
    assert "http://" not in out


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_on_every_address_prints_a_url_others_can_open(tmp_path, capsys, monkeypatch, host):
    pytest.importorskip("uvicorn")
    if host == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    proj = make_project(tmp_path)
    served = []
    monkeypatch.setattr(
        "starlora.serve.run_server", lambda app, sock: served.append(sock.getsockname()[1]), raising=False
    )
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kw: served.append(port))
    capsys.readouterr()
    assert main(["serve", str(proj), "--host", host, "--port", "0"]) == 0
    out = capsys.readouterr().out
    url = out.split(" at ")[1].split()[0]
    assert "127.0.0.1" not in url and "localhost" not in url and "[::1]" not in url
    assert url.startswith("http://") and f":{served[0]}/?token=" in url and served[0] > 0  # the port it listens on
    assert "people who label" in out
    # where no address is found, the URL says to put this machine's address in
    monkeypatch.setattr("starlora.serve.reachable_address", lambda: None)
    assert main(["serve", str(proj), "--host", host, "--port", "0"]) == 0
    out = capsys.readouterr().out
    assert "http://THIS-MACHINE:" in out and "replace THIS-MACHINE" in out


# ---------------------------------------------------------------- 4. stdout's reader goes away


def test_a_closed_pipe_on_stdout_ends_quietly(tmp_path, capsys):
    proj = make_project(tmp_path)
    command = [sys.executable, "-m", "starlora", "status", str(proj)]
    # the reader is gone before anything is written: every write fails (EPIPE)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.close()
    err = child.stderr.read()
    child.wait()
    assert "Traceback" not in err and "BrokenPipeError" not in err and child.returncode == 1, err
    # as a shell pipeline: `starlora status P | head -n 1` (and head -n 0, which reads nothing at all)
    for head in ("head -n 1", "head -n 0"):
        shell = subprocess.run(["bash", "-c", f"{' '.join(command)} | {head}"], capture_output=True, text=True)
        assert "Traceback" not in shell.stderr and "BrokenPipeError" not in shell.stderr, shell.stderr


# ---------------------------------------------------------------- 5. a diverging --lr


def test_a_diverging_lr_is_blamed_not_precision(tmp_path, capsys):
    # 1e30 overflows on any CPU: step 1 leaves B near 1e30, so step 2's attention scores (~1e60) and B's decoupled
    # decay (lr * b_decay * B) are far past fp32's range. At 1e9 B stays finite (~1e25) and whether bf16 training's
    # loss overflows before scoring's logits do depends on the CPU's kernels (on one with AMX it did not).
    line, _ = one_line_error(capsys, main(tiny_run_args(tmp_path, "--lr", "1e30")), "training diverged", "--lr 1e+30")
    assert "non-finite logits" not in line


# ---------------------------------------------------------------- 6. the serve API's body size


def test_the_serve_api_refuses_a_large_body_with_413(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from starlora.serve import create_app

    client = TestClient(create_app(make_project(tmp_path)), base_url="http://127.0.0.1")
    json_type = {"content-type": "application/json"}
    chunks = (b" " * 1024 for _ in range(200))  # no Content-Length: sent in chunks
    for response in (
        client.post("/api/label", content=b"x" * (10 << 20), headers=json_type),
        client.post("/api/label", content=chunks, headers=json_type),
        client.post("/api/label", json={"id": "x", "answer": "t" * (64 * 1024)}),
    ):
        assert response.status_code == 413
        assert "\n" not in response.text and "64 KiB" in response.json()["detail"]
    # a body under the limit, in one piece or in chunks, is read as before
    small = client.post("/api/label", json={"id": "nope", "answer": "true"})
    assert small.status_code == 400 and "nope" in small.json()["detail"]
    pieces = iter([b'{"id": "nope",', b' "answer": "true"}'])
    assert client.post("/api/label", content=pieces, headers=json_type).status_code == 400


# ---------------------------------------------------------------- 7. help texts


def help_text(capsys, *command) -> str:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def option_help(text: str, option: str) -> str:
    """An option's help, on one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if (line.strip() + " ").startswith(option + " "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:3] == "  -" or not lines[i].strip()), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_help_texts_say_what_is_true(capsys):
    run = help_text(capsys, "run")
    assert all(name in option_help(run, "--protocol PROTOCOL") for name in PROTOCOLS)
    assert "sst2" in option_help(run, "--protocol PROTOCOL") and "sst2" in option_help(run, "--task TASK")
    assert all(name in option_help(run, "--task TASK") for name in BUILTIN)
    assert all(name in option_help(help_text(capsys, "init"), "--task TASK") for name in BUILTIN)
    assert all(name in option_help(help_text(capsys, "sweep"), "--protocol PROTOCOL") for name in PROTOCOLS)
    report = " ".join(help_text(capsys, "report").split())
    assert "95% interval" in report and "%%" not in report
    for command in ("eval", "bench"):
        dtype = option_help(help_text(capsys, command), "--dtype {auto,fp32,bf16,fp16}")
        assert "stored resolved" not in dtype and "fp16" in dtype
    assert "optimiser" not in option_help(help_text(capsys, "eval"), "--dtype {auto,fp32,bf16,fp16}")
    status = help_text(capsys, "status")
    description = status.split("\n\n")[1]
    assert not description.startswith("positional") and "next" in description
