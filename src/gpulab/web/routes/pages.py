"""The three pages, rendered from the package's jinja2 templates."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).parent.parent / "templates")
NAV = (("/", "Style"), ("/caption", "Captions"), ("/runs", "Runs and reports"))


def page(request: Request, name: str, title: str, here: str) -> HTMLResponse:
    """Template NAME.html with its script static/NAME.js, under the common header."""
    context = {"title": title, "here": here, "nav": NAV, "script": f"{name}.js"}
    return templates.TemplateResponse(request, f"{name}.html", context)


@router.get("/", response_class=HTMLResponse)
def style_page(request: Request):
    return page(request, "style", "style", "/")


@router.get("/caption", response_class=HTMLResponse)
def caption_page(request: Request):
    return page(request, "caption", "captions", "/caption")


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request):
    return page(request, "runs", "runs", "/runs")
