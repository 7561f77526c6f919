"""Knowledge base: list and edit the clinic's entries, re-embed them, preview retrieval.

An edit is checked (:mod:`appliance.admin.kb_file`), written atomically to the knowledge file
(the first edit copies the packaged file to the data directory and points
``agent.knowledge_file`` at it through the admin drop-in), audited (``AdminKnowledgeEdited``:
the entry id and the action, never the text) and applied with the control op ``kb.reload``,
which re-embeds the entries. If the agent refuses the new file, the edit is undone. With the
agent down the edit is saved and applies when it starts.

The preview sends a typed question to the control op ``kb.preview`` and shows which entries
would answer, best first, with their cosine similarity; the question is neither stored nor
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from appliance.admin.auth import Principal, require
from appliance.admin.config_writer import apply_change
from appliance.admin.kb_file import (
    TEMPLATE_FIELDS,
    KbEntry,
    KbError,
    check_entry,
    copy_path,
    dump_entries,
    is_packaged,
    knowledge_path,
    load_entries,
    locked,
    upsert,
    write_text,
)
from appliance.admin.rbac import Permission
from appliance.admin.web import AdminContext, get_ctx, render
from appliance.agent.kb import KB_ACCEPT
from appliance.config.settings import ApplianceSettings, load_settings
from appliance.control import ControlError
from appliance.errors import ConfigError

_LOGGER = logging.getLogger(__name__)
router = APIRouter()

EDIT = require(Permission.EDIT_KB)
#: Length of a preview question, characters (the agent's ``kb.preview`` limit).
QUESTION_CHARS = (1, 300)


class EntryIn(BaseModel):
    """An entry to add (``new``) or replace, as ``POST /api/kb/entries`` takes it."""

    id: str = Field(max_length=64)
    questions: list[str] = Field(max_length=100)
    answer: str = Field(max_length=4000)
    new: bool = False


class PreviewIn(BaseModel):
    """``POST /api/kb/preview``'s body."""

    question: str = Field(max_length=1000)


def _settings(ctx: AdminContext) -> ApplianceSettings:
    if ctx.settings_path is None:
        return ctx.settings
    try:
        return load_settings(ctx.settings_path)
    except ConfigError as exc:
        raise HTTPException(status_code=409, detail=f"settings unreadable: {exc.message}") from exc


def _reload(ctx: AdminContext, actor: str) -> tuple[str, str]:
    try:
        result = ctx.control.call("kb.reload", {}, actor, timeout=60.0)
    except ControlError as exc:
        if exc.code == "unavailable":
            return "agent_unreachable", "Saved; it applies when the agent starts."
        if exc.code == "bad_request":
            return "refused", str(exc)
        return "reload_failed", f"Saved, but the agent could not reload ({exc.code})."
    entries = result.get("entries") if isinstance(result, dict) else None
    return "reloaded", f"Saved; the agent re-embedded {entries} entries."


def save_entry(ctx: AdminContext, actor: str, entry: KbEntry, *, new: bool) -> str:
    """Write one added or edited entry, audit it and re-embed (blocking).

    Returns:
        A sentence for the user.

    Raises:
        KbError: The edit is refused (nothing written).
        ConfigError: Pointing ``agent.knowledge_file`` at the copy was refused (the copy is
            removed again).
        HTTPException: 409 when the settings cannot be read or, for the packaged file, there
            is no settings file to point at a copy.
    """
    settings = _settings(ctx)
    source = knowledge_path(settings)
    packaged = is_packaged(source)
    target = copy_path(settings) if packaged else source
    if packaged and ctx.settings_path is None:
        raise HTTPException(status_code=409, detail="no settings file: the copy cannot be used")
    with locked(target):
        entries = upsert(load_entries(source), entry, new=new)
        previous = target.read_text(encoding="utf-8") if target.exists() else None
        write_text(target, dump_entries(entries))
        if packaged:
            assert ctx.settings_path is not None
            try:
                apply_change(ctx.settings_path, {"agent": {"knowledge_file": str(target)}})
            except ConfigError:
                _restore(target, previous)
                raise
    ctx.audit.record(
        "AdminKnowledgeEdited", actor, entry_id=entry.id, action="add" if new else "edit"
    )
    applied, message = _reload(ctx, actor)
    if applied == "refused":
        with locked(target):
            _restore(target, previous)
            if packaged and ctx.settings_path is not None:
                with contextlib.suppress(ConfigError):
                    apply_change(ctx.settings_path, {"agent": {"knowledge_file": None}})
        ctx.audit.record("AdminKnowledgeEdited", actor, entry_id=entry.id, action="undone_refused")
        raise KbError(
            f"The agent refused the new knowledge base, so the edit was undone: {message}"
        )
    return message


def _restore(path: Path, previous: str | None) -> None:
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        write_text(path, previous)


class PreviewUnavailable(KbError):
    """The agent cannot run a preview now (not reachable, still loading)."""


def preview(ctx: AdminContext, actor: str, question: object) -> list[dict[str, Any]]:
    """The entries that would answer ``question``, best first (blocking).

    Raises:
        KbError: The question is empty or too long.
        PreviewUnavailable: The agent cannot answer now.
    """
    low, high = QUESTION_CHARS
    if not isinstance(question, str) or not low <= len(question.strip()) <= high:
        raise KbError(f"Type a question of {low}-{high} characters.")
    try:
        result = ctx.control.call("kb.preview", {"question": question.strip()}, actor)
    except ControlError as exc:
        if exc.code == "unavailable":
            raise PreviewUnavailable(
                "The agent is not reachable, so the preview cannot run now."
            ) from exc
        raise PreviewUnavailable(f"The agent could not run the preview ({exc.code}).") from exc
    matches = result.get("matches") if isinstance(result, dict) else None
    out = []
    for m in matches if isinstance(matches, list) else []:
        if isinstance(m, dict):
            score = float(m.get("score") or 0.0)
            out.append(
                {
                    "entry_id": str(m.get("entry_id", "")),
                    "score": score,
                    "text": str(m.get("text", "")),
                    "answers": score >= KB_ACCEPT,
                }
            )
    return out


def _page(
    request: Request,
    *,
    status_code: int = 200,
    message: str = "",
    error: str = "",
    question: str = "",
    matches: list[dict[str, Any]] | None = None,
    draft: dict[str, Any] | None = None,
) -> HTMLResponse:
    ctx = get_ctx(request)
    settings = _settings(ctx)
    path = knowledge_path(settings)
    load_error = ""
    try:
        entries = load_entries(path)
    except KbError as exc:
        entries, load_error = [], str(exc)
    return render(
        request,
        "kb/index.html",
        status_code=status_code,
        entries=entries,
        kb_file=str(path),
        packaged=is_packaged(path),
        message=message,
        error=error or load_error,
        question=question,
        matches=matches,
        fields=sorted(TEMPLATE_FIELDS),
        threshold=KB_ACCEPT,
        draft=draft or {},
    )


@router.get("/kb", response_class=HTMLResponse)
async def kb_page(request: Request, principal: Principal = Depends(EDIT)) -> HTMLResponse:
    """Every entry with its edit form, the add form and the preview box."""
    return _page(request)


async def _save_form(request: Request, principal: Principal, entry_id: str | None) -> HTMLResponse:
    form = await request.form()
    draft = {k: str(form.get(k, "")) for k in ("id", "questions", "answer")}
    new = entry_id is None
    entry_id = draft["id"].strip() if entry_id is None else entry_id
    try:
        entry = check_entry(entry_id, draft["questions"], draft["answer"])
        message = await asyncio.to_thread(
            save_entry, get_ctx(request), principal.actor, entry, new=new
        )
    except (KbError, ConfigError) as exc:
        text = exc.message if isinstance(exc, ConfigError) else str(exc)
        return _page(request, status_code=422, error=text, draft=draft | {"id": entry_id})
    return _page(request, message=message)


@router.post("/kb/entries", response_class=HTMLResponse)
async def kb_add(request: Request, principal: Principal = Depends(EDIT)) -> HTMLResponse:
    """Add an entry (form fields ``id``, ``questions`` one per line, ``answer``)."""
    return await _save_form(request, principal, None)


@router.post("/kb/entries/{entry_id}", response_class=HTMLResponse)
async def kb_edit(
    request: Request, entry_id: str, principal: Principal = Depends(EDIT)
) -> HTMLResponse:
    """Replace an entry's questions and answer."""
    return await _save_form(request, principal, entry_id)


@router.post("/kb/preview", response_class=HTMLResponse)
async def kb_preview(request: Request, principal: Principal = Depends(EDIT)) -> HTMLResponse:
    """Show which entries would answer a typed question."""
    form = await request.form()
    question = str(form.get("question", ""))[:1000]
    try:
        matches = await asyncio.to_thread(preview, get_ctx(request), principal.actor, question)
    except KbError as exc:
        code = 409 if isinstance(exc, PreviewUnavailable) else 422
        return _page(request, status_code=code, error=str(exc), question=question)
    return _page(request, question=question, matches=matches)


@router.get("/api/kb")
async def api_kb(request: Request, principal: Principal = Depends(EDIT)) -> dict[str, Any]:
    """``{"file", "packaged", "entries": [{"id", "questions", "answer"}]}``."""
    path = knowledge_path(_settings(get_ctx(request)))
    try:
        entries = load_entries(path)
    except KbError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return {
        "file": str(path),
        "packaged": is_packaged(path),
        "entries": [
            {"id": e.id, "questions": list(e.questions), "answer": e.answer} for e in entries
        ],
    }


@router.post("/api/kb/entries")
async def api_kb_save(
    request: Request,
    body: EntryIn = Body(...),
    principal: Principal = Depends(EDIT),
) -> dict[str, str]:
    """Add (``new``) or replace an entry: ``{"message"}``; 422 with the reason when refused."""
    try:
        entry = check_entry(body.id, body.questions, body.answer)
        message = await asyncio.to_thread(
            save_entry, get_ctx(request), principal.actor, entry, new=body.new
        )
    except KbError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    except ConfigError as exc:
        raise HTTPException(status_code=422, detail=exc.message) from exc
    return {"message": message}


@router.post("/api/kb/preview")
async def api_kb_preview(
    request: Request, body: PreviewIn = Body(...), principal: Principal = Depends(EDIT)
) -> dict[str, list[dict[str, Any]]]:
    """``{"matches": [{"entry_id", "score", "text", "answers"}]}``, best first."""
    try:
        matches = await asyncio.to_thread(preview, get_ctx(request), principal.actor, body.question)
    except KbError as exc:
        code = 409 if isinstance(exc, PreviewUnavailable) else 422
        raise HTTPException(status_code=code, detail=str(exc)) from exc
    return {"matches": matches}
