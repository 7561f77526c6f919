"""Admin page routes: quality."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
