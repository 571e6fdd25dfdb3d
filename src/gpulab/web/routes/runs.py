"""Runs and reports: the run list and the latest bench report."""

import json

from fastapi import APIRouter

from gpulab.web.errors import ApiError
from gpulab.web.run_view import runs_json
from gpulab.web.state import State

router = APIRouter()


@router.get("/api/runs")
def runs_list(state: State):
    return runs_json(state.runs_root)


@router.get("/api/reports/latest")
def latest_report(state: State):
    found = sorted((state.runs_root / "bench").glob("*/results.json"))
    if not found:
        raise ApiError(404, "no bench report yet; run `gpulab bench`")
    doc = json.loads(found[-1].read_text())
    stamp = found[-1].parent.name
    return {
        "id": stamp,
        "html": f"/files/reports/{stamp}/report.html",
        "markdown": f"/files/reports/{stamp}/report.md",
        "created_utc": doc.get("created_utc"),
        "mode": doc.get("mode"),
        "rows": doc.get("rows", []),
        "probe": (doc.get("probe") or {}).get("verdict"),
    }
