"""Runs and reports: the run list, the latest bench report and the share reports."""

import json

from fastapi import APIRouter

from gpulab.share.report import by_mode
from gpulab.web.errors import ApiError
from gpulab.web.guards import REPORT_STAMP
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


def _share_json(stamp: str, doc: dict) -> dict:
    """What the runs page shows of a share report: its links, conclusion and, per mode, the
    set's figures and the jobs' NP (one mode, or several side by side)."""
    base = f"/files/share/{stamp}"
    modes = by_mode(doc)
    return {
        "id": stamp,
        "html": f"{base}/report.html",
        "markdown": f"{base}/report.md",
        "chart": f"{base}/np_per_job.png",
        **{k: doc.get(k) for k in ("created_utc", "device", "device_name", "conclusion")},
        "mode": ", ".join(str(m) for m in modes),
        "modes": [_mode_json(m, r) for m, r in modes.items() if isinstance(r, dict)],
    }


def _mode_json(mode: str, results: dict) -> dict:
    keep = ("id", "spec", "np_mean", "np_interval", "failed", "error")
    return {
        "mode": mode,
        "set": results.get("set") or {},
        "jobs": [{k: j.get(k) for k in keep} for j in results.get("jobs") or []],
    }


def _share_doc(path) -> dict | None:
    """A share results.json, or None for a file that is not one (half copied, another kind)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("kind") in ("share", "share-modes") else None


@router.get("/api/reports/share")
def share_reports(state: State):
    """Every share report under runs/share, newest first; an empty list when there is none."""
    out = []
    for path in sorted((state.runs_root / "share").glob("*/results.json"), reverse=True):
        doc = _share_doc(path)
        if doc is not None and REPORT_STAMP.match(path.parent.name):
            out.append(_share_json(path.parent.name, doc))
    return out
