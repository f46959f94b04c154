"""The review page's routes: postings, a posting's top k with reasons, a candidate, "why is A above
B", and shortlist / reject feedback recorded as outcomes. Plain HTML forms and links: it works
without JavaScript. Every value shown is escaped by Jinja's autoescape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ranker.transport.client import (
    DECISION_AID_NOTICE,
    FEEDBACK_STAGES,
    GrpcRankerClient,
    ServiceError,
    candidate_view,
    comparison_view,
    posting_header,
    ranking_view,
)

MAX_K = 100
"""Most candidates one page shows."""

_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("ranker.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _k(request: Request) -> int:
    try:
        return max(1, min(MAX_K, int(request.query_params.get("k", "10"))))
    except ValueError:
        return 10


def create_app(client: GrpcRankerClient) -> Starlette:
    """The review page's ASGI app, calling the service through `client`."""

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("notice", DECISION_AID_NOTICE)
        context.setdefault("model_version", None)
        context.setdefault("request_id", None)
        return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        # gRPC calls block: off the event loop, in Starlette's thread pool.
        return await run_in_threadpool(fn, *args)

    def failed(e: ServiceError) -> HTMLResponse:
        return page("error.html", _STATUS.get(e.code, 502), message=str(e), code=e.code)

    async def postings(request: Request) -> Response:
        token = request.query_params.get("page", "")
        try:
            found = await call(client.list_postings, 50, token)
            version = await call(client.model_version)
        except ServiceError as e:
            return failed(e)
        return page(
            "postings.html",
            postings=list(found.postings),
            next_page=found.next_page_token,
            model_version=version,
        )

    async def ranking(request: Request) -> Response:
        posting_id = request.path_params["posting_id"]
        k = _k(request)
        try:
            r = await call(client.top_k, posting_id, k)
            posting = await call(client.posting, posting_id)
            cands = await call(client.candidates, [c.candidate_id for c in r.results])
        except ServiceError as e:
            return failed(e)
        view = ranking_view(posting, r, cands, explain=True)
        done = request.query_params.get("done", "")
        return page(
            "ranking.html",
            posting=posting,
            header=posting_header(posting),
            view=view,
            k=k,
            done=done if done in FEEDBACK_STAGES else "",
            done_candidate=request.query_params.get("candidate", ""),
            stages=FEEDBACK_STAGES,
            model_version=r.model_version,
            request_id=r.request_id,
        )

    async def feedback(request: Request) -> Response:
        posting_id = request.path_params["posting_id"]
        if not _same_origin(request):
            return page("error.html", 403, message="feedback must come from this page", code="")
        form = await request.form()
        candidate_id = str(form.get("candidate_id", ""))
        action = str(form.get("action", ""))
        try:
            await call(client.record_feedback, posting_id, candidate_id, action)
        except ServiceError as e:
            return failed(e)
        query = urlencode(
            {"k": str(form.get("k", "10")), "done": action, "candidate": candidate_id}
        )
        # 303: the browser follows with a GET, so a reload does not record the outcome again.
        return RedirectResponse(f"/postings/{posting_id}?{query}#c-{candidate_id}", 303)

    async def compare(request: Request) -> Response:
        posting_id = request.path_params["posting_id"]
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        try:
            r = await call(client.why, posting_id, a, b)
        except ServiceError as e:
            return failed(e)
        return page(
            "compare.html",
            posting_id=posting_id,
            view=comparison_view(r),
            k=_k(request),
            model_version=r.model_version,
            request_id=r.request_id,
        )

    async def candidate(request: Request) -> Response:
        cid = request.path_params["candidate_id"]
        try:
            c = await call(client.candidate, cid)
        except ServiceError as e:
            return failed(e)
        return page(
            "candidate.html",
            candidate=candidate_view(c),
            posting_id=request.query_params.get("posting", ""),
        )

    return Starlette(
        routes=[
            Route("/", postings),
            Route("/postings/{posting_id}", ranking),
            Route("/postings/{posting_id}/feedback", feedback, methods=["POST"]),
            Route("/postings/{posting_id}/compare", compare),
            Route("/candidates/{candidate_id}", candidate),
        ]
    )


def _same_origin(request: Request) -> bool:
    """Refuse a form posted from another site (a browser sends Origin with every POST)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")
