"""Admin page routes: testcall."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
