"""Sign-in, invites, sign-out, one's password, and the operator's pages."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from batchyard.api.deps import PlatformDep
from batchyard.api.routes_admin import invite_url
from batchyard.domain.plans import PLAN_FIELDS, plan_from_dict
from batchyard.errors import BatchyardError, Forbidden, InvalidInput
from batchyard.services import accounts, people, sessions
from batchyard.web.auth import (
    PRE_COOKIE,
    OperatorSession,
    Person,
    Who,
    clear_session_cookie,
    client_address,
    new_pre_token,
    redirect,
    secure_cookies,
    set_session_cookie,
)
from batchyard.web.render import page

router = APIRouter(include_in_schema=False)


def _with_pre_token(request: Request, template: str, code: int = 200,
                    **context: Any) -> HTMLResponse:
    token = new_pre_token()
    response = page(request, template, code=code, pre_token=token, **context)
    response.set_cookie(PRE_COOKIE, token, max_age=3600, path="/", httponly=True,
                        samesite="strict", secure=secure_cookies(request))
    return response


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _check_pre_token(request: Request, form: dict[str, str]) -> None:
    cookie = request.cookies.get(PRE_COOKIE, "")
    sent = form.get("csrf", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Forbidden("The form's security token is missing or stale; reload the page.")


@router.get("/sign-in")
def sign_in_page(request: Request) -> HTMLResponse:
    return _with_pre_token(request, "sign_in.html", title="Sign in")


@router.post("/sign-in")
async def sign_in(request: Request, platform: PlatformDep) -> Response:
    form = await _form(request)
    _check_pre_token(request, form)
    try:
        new = await run_in_threadpool(sessions.sign_in, platform, form.get("email"),
                                      form.get("password"), client_address(request))
    except BatchyardError as exc:
        response = _with_pre_token(request, "sign_in.html", code=exc.status,
                                   title="Sign in", error=exc.message,
                                   email=form.get("email", ""))
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    signed_in = redirect("/jobs")
    set_session_cookie(request, signed_in, new.secret)
    return signed_in


@router.post("/sign-out")
async def sign_out(request: Request, who: Who, platform: PlatformDep) -> Response:
    secret = request.cookies.get("batchyard_session", "")
    await run_in_threadpool(sessions.sign_out, platform, secret)
    response = redirect("/operator/sign-in" if who.operator else "/sign-in")
    clear_session_cookie(response)
    return response


@router.get("/invite/{token}")
def invite_page(token: str, request: Request, platform: PlatformDep) -> HTMLResponse:
    email = sessions.invite_email(platform, token)
    return _with_pre_token(request, "invite.html", title="Set your password", email=email,
                           token=token)


@router.post("/invite/{token}")
async def accept_invite(token: str, request: Request, platform: PlatformDep) -> Response:
    form = await _form(request)
    _check_pre_token(request, form)
    email = await run_in_threadpool(sessions.invite_email, platform, token)
    if form.get("password") != form.get("password_again"):
        return _with_pre_token(request, "invite.html", code=422, title="Set your password",
                               email=email, token=token,
                               error="The two passwords are not the same.")
    try:
        new = await run_in_threadpool(sessions.accept_invite, platform, token,
                                      form.get("password"), client_address(request))
    except InvalidInput as exc:
        return _with_pre_token(request, "invite.html", code=422, title="Set your password",
                               email=email, token=token, error=exc.message)
    response = redirect("/jobs")
    set_session_cookie(request, response, new.secret)
    return response


@router.get("/account/password")
def password_page(request: Request, actor: Person) -> HTMLResponse:
    return page(request, "password.html", title="Change your password")


@router.post("/account/password")
async def change_password(request: Request, actor: Person, platform: PlatformDep) -> Response:
    form = await _form(request)
    try:
        await run_in_threadpool(sessions.change_password, platform, actor,
                                form.get("current_password"), form.get("new_password"))
    except InvalidInput as exc:
        return page(request, "password.html", code=422, title="Change your password",
                    error=exc.message)
    response = redirect("/sign-in")
    clear_session_cookie(response)
    return response


# -- the operator ------------------------------------------------------------------------


@router.get("/operator/sign-in")
def operator_sign_in_page(request: Request) -> HTMLResponse:
    return _with_pre_token(request, "operator_sign_in.html", title="Operator sign-in")


@router.post("/operator/sign-in")
async def operator_sign_in(request: Request, platform: PlatformDep) -> Response:
    form = await _form(request)
    _check_pre_token(request, form)
    try:
        new = await run_in_threadpool(sessions.operator_sign_in, platform, form.get("token"),
                                      request.app.state.operator_token, client_address(request))
    except BatchyardError as exc:
        return _with_pre_token(request, "operator_sign_in.html", code=exc.status,
                               title="Operator sign-in", error=exc.message)
    response = redirect("/operator")
    set_session_cookie(request, response, new.secret)
    return response


@router.get("/operator")
def operator_home(request: Request, _op: OperatorSession,
                  platform: PlatformDep) -> HTMLResponse:
    return page(request, "operator.html", title="Accounts",
                accounts=people.list_accounts(platform))


@router.post("/operator/accounts")
async def operator_create_account(request: Request, _op: OperatorSession,
                                  platform: PlatformDep) -> Response:
    form = await _form(request)
    account = await run_in_threadpool(accounts.create_account, platform, {
        "name": form.get("name"), "timezone": form.get("timezone") or "UTC",
        "batch_jobs_enabled": form.get("batch_jobs_enabled") == "on"})
    return redirect(f"/operator/accounts/{account.id}")


@router.get("/operator/accounts/{account_id}")
def operator_account(account_id: str, request: Request, _op: OperatorSession,
                     platform: PlatformDep) -> HTMLResponse:
    account = accounts.get_account(platform, account_id)
    return page(request, "operator_account.html", title=account.name, account=account,
                plan=plan_from_dict(account.plan).as_dict(),
                databases={name: accounts.describe_database_url(platform.secrets.decrypt(v))
                           if v else None for name, v in (("main", account.db_main),
                                                          ("etl", account.db_etl))},
                users=people.list_users(platform, account_id),
                invite=request.query_params.get("invite"))


def _plan_changes(form: dict[str, str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in PLAN_FIELDS:
        if name == "database_access":
            changes[name] = form.get("plan.database_access") == "on"
            continue
        raw = form.get(f"plan.{name}", "").strip()
        if raw:
            try:
                changes[name] = float(raw) if "." in raw else int(raw)
            except ValueError as exc:
                raise InvalidInput(f"plan.{name} must be a number",
                                   field=f"plan.{name}") from exc
    return changes


@router.post("/operator/accounts/{account_id}")
async def operator_update_account(account_id: str, request: Request, _op: OperatorSession,
                                  platform: PlatformDep) -> Response:
    form = await _form(request)
    data: dict[str, Any] = {
        "name": form.get("name", ""), "timezone": form.get("timezone", "UTC"),
        "batch_jobs_enabled": form.get("batch_jobs_enabled") == "on",
        "super_admin_only": form.get("super_admin_only") == "on",
        "budget_mode": form.get("budget_mode", "recorded"), "plan": _plan_changes(form)}
    databases: dict[str, str | None] = {name: form[f"db_{name}"].strip()
                                        for name in ("main", "etl")
                 if form.get(f"db_{name}", "").strip()}
    databases.update({name: None for name in ("main", "etl")
                      if form.get(f"db_{name}_clear") == "on"})
    if databases:
        data["databases"] = databases
    await run_in_threadpool(accounts.update_account, platform, account_id, data)
    return redirect(f"/operator/accounts/{account_id}")


@router.post("/operator/accounts/{account_id}/users")
async def operator_create_user(account_id: str, request: Request, _op: OperatorSession,
                               platform: PlatformDep) -> Response:
    form = await _form(request)
    user, _key = await run_in_threadpool(accounts.create_user, platform, account_id, {
        "email": form.get("email"), "role": form.get("role")})
    token = await run_in_threadpool(sessions.create_invite, platform, account_id, user.id)
    return page(request, "operator_invite.html", title="User invited", email=user.email,
                url=invite_url(request, token), account_id=account_id)


@router.post("/operator/accounts/{account_id}/users/{user_id}/invite")
async def operator_reinvite(account_id: str, user_id: str, request: Request,
                            _op: OperatorSession, platform: PlatformDep) -> Response:
    token = await run_in_threadpool(sessions.create_invite, platform, account_id, user_id)
    return page(request, "operator_invite.html", title="New invite link", email=user_id,
                url=invite_url(request, token), account_id=account_id)
