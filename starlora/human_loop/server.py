"""The HTTP side of `starlora serve` (FastAPI): the routes at module level, over the project folder, jobs, token and
locality the application holds in app.state. A route that refuses raises its StarloraError, which the one handler
turns into a one-line JSON answer: 409 while a job runs (Busy), else 400."""

from __future__ import annotations

import secrets
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from ..errors import StarloraError
from . import project as P
from . import serve as S
from .serve import MAX_BODY, TOKEN_COOKIE, BodyLimit, Busy, Jobs, cross_site, is_local, query_items, state

routes = APIRouter()


class LabelIn(BaseModel):
    id: str
    answer: str


class UndoIn(BaseModel):
    id: str


class TrainIn(BaseModel):
    partial: bool = False  # train although the last query is partly labeled (its rest is left out)


class QueryIn(BaseModel):
    n: int = Field(ge=1, le=100_000)
    random: bool = False


def _folder(request: Request) -> Path:
    return request.app.state.folder


def _jobs(request: Request) -> Jobs:
    return request.app.state.jobs


@routes.get("/", response_class=HTMLResponse)
def page():
    return files("starlora.human_loop").joinpath("web/index.html").read_text(encoding="utf-8")


@routes.get("/api/state")
def get_state(request: Request):
    job = _jobs(request).current
    return {**state(_folder(request)), "job": job.view() if job else None}


@routes.get("/api/query")
def get_query(request: Request):
    return query_items(_folder(request))


@routes.post("/api/label")
def post_label(item: LabelIn, request: Request):
    with _jobs(request).exclusive():
        new = P.label_one(_folder(request), item.id, item.answer)
    return {"new": new, **state(_folder(request))["query"]}


@routes.post("/api/undo")
def post_undo(item: UndoIn, request: Request):
    with _jobs(request).exclusive():
        P.unlabel(_folder(request), item.id)
    return state(_folder(request))["query"]


@routes.post("/api/train", status_code=202)
def post_train(request: Request, item: TrainIn | None = None):
    item, folder = item or TrainIn(), _folder(request)
    project = P.open_project(folder)
    job = _jobs(request).start(
        "train",
        lambda: P.check_can_train(project, project.labels(), project.adapters(), project.queries(), item.partial),
        lambda: P.train(folder, command=f"starlora serve {folder}", partial=item.partial),
    )
    return job.view()


@routes.post("/api/query", status_code=202)
def post_query(item: QueryIn, request: Request):
    folder = _folder(request)
    project = P.open_project(folder)
    job = _jobs(request).start(
        "query",
        lambda: P.check_can_query(project, project.labels(), project.adapters(), project.queries()),
        lambda: P.query(folder, item.n, random=item.random),
    )
    return job.view()


@routes.post("/api/predict", status_code=202)
def post_predict(request: Request):
    """The latest adapter's predictions for every unlabeled pool example (predict.predict_unlabeled)."""
    from ..predict import predict_unlabeled

    folder = _folder(request)
    job = _jobs(request).start("predict", lambda: S.check_can_predict(folder), lambda: predict_unlabeled(folder))
    return job.view()


@routes.get("/api/predictions.{suffix}")
def get_predictions(suffix: str, request: Request):
    """The last finished predictions as a download: predictions.csv or predictions.jsonl."""
    if suffix not in ("csv", "jsonl"):
        raise StarloraError(f"predictions come as .csv or .jsonl, not .{suffix}")
    folder, made = _folder(request), S.predictions(_folder(request))
    if made is None:
        raise StarloraError("no predictions yet: run Predict first")
    name = f"{folder.name}-round{made['round']}-predictions.{suffix}"
    return FileResponse(
        folder / "predictions" / f"unlabeled.{suffix}",
        filename=name,
        media_type="text/csv" if suffix == "csv" else "application/jsonl",
    )


async def one_line(request: Request, e: StarloraError):
    """Every refusal and every file damaged while serving: its one line, no traceback."""
    return JSONResponse({"detail": str(e)}, status_code=409 if isinstance(e, Busy) else 400)


async def guard(request: Request, call_next):
    """Only requests to localhost when bound there (no DNS rebinding), changes from the page's own origin only
    (no CSRF), and the token on every request when bound elsewhere."""
    local, token = request.app.state.local, request.app.state.token
    if local and not is_local(request.url.hostname or ""):
        return PlainTextResponse("starlora serve answers requests to localhost only", status_code=403)
    if request.method != "GET" and cross_site(request.headers):
        return PlainTextResponse("starlora serve: changes come from its own page only", status_code=403)
    if token is not None:
        given = (
            request.query_params.get("token")
            or request.headers.get("x-starlora-token")
            or request.cookies.get(TOKEN_COOKIE)
            or ""
        )
        if not secrets.compare_digest(given.encode(), token.encode()):
            return PlainTextResponse(
                "starlora serve: this address needs the token printed when the server "
                "started (open the URL it printed)",
                status_code=403,
            )
    response = await call_next(request)
    if token is not None and request.query_params.get("token"):
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return response


def application(folder: Path, jobs: Jobs, token: str | None, local: bool) -> FastAPI:
    """The application: the routes, the handler, the guard, and the body limit (added last, so it runs first:
    before the body is read)."""
    app = FastAPI(title="starlora", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.folder, app.state.jobs, app.state.token, app.state.local = folder, jobs, token, local
    app.include_router(routes)
    app.add_exception_handler(StarloraError, one_line)
    app.middleware("http")(guard)
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    return app
