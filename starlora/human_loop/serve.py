"""`starlora serve PROJECT`: the human loop as a local web page over the same project folder the commands use. This
module holds what the page shows, the background jobs, the request guards and the socket; server.py the routes.

The page is presentation only. Every label goes through project.label_one (the checks and the atomic write of
`starlora label`, under the same lock); training, querying and predicting (predict.predict_unlabeled) run one at
a time in a background thread; every request reads the folder afresh. So the page and the commands mix freely, and
killing the server at any moment leaves the folder as killing the command would.

Bound to localhost by default, where only requests addressed to localhost are answered (a page elsewhere cannot
reach it through DNS rebinding). Any other address needs a token, generated and printed at start, on every request.
"""

import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import StarloraError
from ..progress import watch_progress
from . import project as P

logger = logging.getLogger(__name__)
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
TOKEN_COOKIE = "starlora_token"
MAX_BODY = 64 * 1024  # bytes of a request body: a label, an undo or a query request is well under 1 KiB


def is_local(host: str) -> bool:
    try:
        return host in LOCAL_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cross_site(headers) -> bool:
    """A request another site's page sent (a form or fetch from the user's browser; CSRF): browsers say so in
    Sec-Fetch-Site, older ones name the page's origin, which must then be the host the request went to."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != headers.get("host")


class BackgroundJob:
    """One background training or query: its current progress bar, its last log line, and how it ended."""

    def __init__(self, kind: str):
        self.kind, self.started = kind, time.time()
        self.bar = None
        self.messages: list[str] = []
        self.error: str | None = None
        self.finished: float | None = None
        self.thread: threading.Thread | None = None

    def view(self) -> dict:
        bar = self.bar
        return {
            "kind": self.kind,
            "running": self.finished is None,
            "error": self.error,
            "message": " ".join(self.messages),
            "step": bar.desc if bar is not None else "loading the model",
            "done": bar.n if bar is not None else 0,
            "total": bar.total if bar is not None else None,
            "seconds": round((self.finished or time.time()) - self.started, 1),
        }


class Jobs:
    """At most one training or query at a time: a second start is refused while one runs."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current: BackgroundJob | None = None

    @property
    def running(self) -> BackgroundJob | None:
        job = self.current
        return job if job is not None and job.finished is None else None

    def start(self, kind: str, check, work) -> BackgroundJob:
        """Run work() in the background after check() (which raises when the folder is not ready for it)."""
        with self.exclusive():
            check()
            job = self.current = BackgroundJob(kind)
        job.thread = threading.Thread(target=self._run, args=(job, work), name=f"starlora-{kind}", daemon=True)
        job.thread.start()
        return job

    def refuse_if_busy(self) -> None:
        running = self.running  # read once: the job may finish in between
        if running:
            what = {"train": "training", "query": "a query", "predict": "a prediction"}[running.kind]
            raise Busy(f"{what} is already running; wait for it to finish")

    @contextlib.contextmanager
    def exclusive(self):
        """Holds the lock, so nothing else starts meanwhile, and raises Busy if a job runs now: around a start, or a
        label change, which a training must not see half-way, since it reads the labels as they are when it starts."""
        with self._lock:
            self.refuse_if_busy()
            yield

    def _run(self, job: BackgroundJob, work) -> None:
        handler = _JobMessages(job)
        logging.getLogger("starlora").addHandler(handler)
        try:
            with watch_progress(lambda bar: setattr(job, "bar", bar)):
                work()
        except StarloraError as e:
            job.error = str(e)
        except Exception as e:  # the page says what failed; the server keeps serving
            logger.exception(f"{job.kind} failed")
            job.error = f"{type(e).__name__}: {e}"
        finally:
            logging.getLogger("starlora").removeHandler(handler)
            job.finished = time.time()


class Busy(StarloraError):
    pass


class _JobMessages(logging.Handler):
    """Keeps every info line the job's thread logs (e.g. the held-out accuracy of the adapter just trained), for the
    page."""

    def __init__(self, job: BackgroundJob):
        super().__init__(logging.INFO)
        self.job, self.thread = job, threading.get_ident()

    def emit(self, record):
        if record.thread == self.thread:
            self.job.messages.append(record.getMessage())


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 and a one-line JSON error, refused from its
    Content-Length before any of it is read, or (sent in chunks without one) as soon as the bytes read pass it; the
    application then reads the body this has buffered."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    def message(self) -> str:
        return f"request body over {self.limit // 1024} KiB refused"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        too_large = JSONResponse({"detail": self.message()}, status_code=413)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:  # the server reads no more than it says
            if not declared.strip().isdigit() or int(declared) > self.limit:
                return await too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        buffered, seen = [], 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":  # the client went away
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break

        async def replay():
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


# ---------------------------------------------------------------- what the page shows


def state(folder) -> dict:
    """The project as the page shows it: counts, the learning curve, the last query, what to do next."""
    project = P.open_project(folder)
    cfg, task = project.cfg, project.task
    labels, queries, adapters, pool = project.labels(), project.queries(), project.adapters(), project.pool()
    records = [project.trained(a) for a in adapters]
    per_round = Counter(r["round"] for r in labels)
    rounds = [
        {
            "round": t,
            "queried": len(queries[t]["ids"]) if t < len(queries) else 0,
            "labeled": per_round.get(t, 0),
            "trained_on": records[t]["n_labels"] if t < len(records) else None,
            "accuracy": records[t].get("accuracy") if t < len(records) else None,
        }
        for t in range(max(len(queries), len(records)))
    ]
    last = queries[-1] if queries else None
    waiting = P.pending(queries, labels, adapters)
    return {
        "project": {
            "name": project.folder.name,
            "task": cfg.task,
            "strategy": cfg.strategy,
            "model": cfg.model,
            "closed": task.closed,
            "candidates": list(task.candidates or []),
            "rounds_planned": cfg.rounds,
        },
        "counts": {
            "pool": len(pool),
            "labeled": len(labels),
            "asked": sum(len(q["ids"]) for q in queries),
            "awaiting": len(waiting),
            "held_out": len(project.test()),
        },
        "answers": dict(Counter(task.gold(r["answer"]) for r in labels)) if task.closed else {},
        "rounds": rounds,
        "query": None
        if last is None
        else {
            "round": len(queries) - 1,
            "size": len(last["ids"]),
            "labeled": len(last["ids"]) - len(waiting),
            "how": last.get("how", "?"),
            "lambda": last.get("lambda"),
            "file": last["file"],
            "trained": len(adapters) >= len(queries),
        },
        "next_lambda": P.query_lambda(project, len(queries)),
        "mixes": project.strategy.combine.mixes,
        "can_train": not waiting and bool(labels) and (not records or records[-1]["n_labels"] < len(labels)),
        "can_query": not waiting and not (labels and len(adapters) < len(queries)),
        "stopping": P.stopping_advice(project, records),
        "next": P.next_step(project, labels, queries, adapters),
        "can_predict": bool(adapters),
        "predictions": predictions(folder),
    }


def predictions(folder) -> dict | None:
    """The last finished predictions of the unlabeled pool (round, adapter, rows), or None."""
    from ..files import read_json

    record = Path(folder) / "predictions" / "unlabeled.json"
    return read_json(record, {"round": int, "rows": int}) if record.exists() else None


def check_can_predict(folder) -> None:
    if not P.open_project(folder).adapters():
        raise StarloraError("no adapter trained yet: train a round first, then predict")


def query_items(folder) -> dict:
    """The last query's examples in order, each with its label so far and the model's guess and score."""
    project = P.open_project(folder)
    queries = project.queries()
    if not queries:
        return {"round": None, "items": []}
    last = queries[-1]
    rows = {r["id"]: r for r in project.pool()}
    answers = {r["id"]: r["answer"] for r in project.labels()}
    guesses, scores = last.get("guesses", {}), last.get("scores", {})
    return {
        "round": len(queries) - 1,
        "items": [
            {
                "id": i,
                "prompt": rows[i]["prompt"],
                "answer": answers.get(i),
                "guess": guesses.get(i),
                "score": scores.get(i),
            }
            for i in last["ids"]
        ],
    }


# ---------------------------------------------------------------- the application


def create_app(folder, token: str | None = None, local: bool = True):
    """The FastAPI application over a project folder (server.py). token: required on every request (query
    parameter `token`, which also sets a cookie, the header X-Starlora-Token, or that cookie). local: answer only
    requests addressed to localhost."""
    try:
        from .server import application
    except ImportError:
        raise StarloraError("starlora serve needs the web extra: pip install 'starlora[serve]'") from None
    folder = Path(folder)
    state(folder)  # every project file read strictly: a damaged one is a clear error before anything is served
    return application(folder, Jobs(), token, local)


def serve(folder, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the page until Ctrl+C. Another address than localhost gets a fresh token, printed with the URL."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise StarloraError("starlora serve needs the web extra: pip install 'starlora[serve]'") from None
    local = is_local(host)
    token = None if local else secrets.token_urlsafe(16)
    app = create_app(folder, token=token, local=local)
    sock = bind(host, port)  # a bad --host or --port is refused here, before anything is printed
    port = sock.getsockname()[1]  # --port 0: the free port the system chose
    everywhere = host in ("0.0.0.0", "::", "")
    shown = (reachable_address() or "THIS-MACHINE") if everywhere else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/" + (f"?token={token}" if token else "")
    logger.info(f"starlora serve: {folder} at {url}  (Ctrl+C stops)")
    if everywhere:
        found = shown != "THIS-MACHINE"
        logger.info(
            f"listening on every address of this machine ({host or '0.0.0.0'}): "
            + (
                "the URL names the one found; the labelers may need another of its addresses"
                if found
                else "replace THIS-MACHINE in the URL with an address the labelers reach this machine at"
            )
        )
    if token:
        logger.info("every request needs this token; share the URL only with the people who label")
    try:
        run_server(app, sock)
    finally:
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a StarloraError naming --host or --port: a port out of range, one in use,
    one this user may not take, an address that does not resolve or is not this machine's."""
    if not 0 <= port <= 65535:
        raise StarloraError(f"--port {port}: a port is 1 to 65535 (0: any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError, ValueError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise StarloraError(f"--host {host}: not an address, nor a name that resolves ({reason})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free again
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # '::' takes IPv4 connections too
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StarloraError(
                f"--port {port}: already in use on {host} (another starlora serve?); choose another --port"
            ) from None
        if e.errno == errno.EACCES:
            raise StarloraError(
                f"--port {port}: not allowed for this user (ports below 1024 need root); choose another --port"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise StarloraError(f"--host {host}: not an address of this machine") from None
        raise StarloraError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return sock


def reachable_address() -> str | None:
    """An address other machines may reach this one at, for the URL of a server bound to every address; None if
    none is found. The UDP connect sends nothing: it only asks the kernel which interface routes to that
    (documentation) address."""
    with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = ipaddress.ip_address(probe.getsockname()[0])
        if not (address.is_loopback or address.is_unspecified):
            return str(address)
    with contextlib.suppress(OSError, ValueError):
        address = ipaddress.ip_address(socket.gethostbyname(socket.gethostname()))
        if not (address.is_loopback or address.is_unspecified):
            return str(address)
    return None


def run_server(app, sock: socket.socket) -> None:
    """uvicorn on the socket bind() opened."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
