"""The operator's sign-in and language cookies, and the CSRF tokens of the console's POST forms.

The session cookie holds the tenant token itself (the services are the ones that judge it; the
console keeps no state, so a restart or a second replica signs nobody out). It is HttpOnly (no
script reads it), SameSite=Strict (no other site's page or link sends it), Path=/, expires after
`SESSION_SECONDS`, and Secure when the console is reached over HTTPS (or MEMBEROPS_CONSOLE_SECURE
says so, for a TLS-terminating proxy).

CSRF: every POST form carries a token the server checks besides SameSite. Signed in, it is an HMAC
of a fixed label keyed by the session token: only a page the console rendered for this session
knows it, and it reveals nothing about the token. The sign-in form, before any session, uses the
double-submit pattern: a random value in a SameSite=Strict cookie that the form repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from console import i18n

SESSION_COOKIE = "memberops_session"
LOGIN_CSRF_COOKIE = "memberops_login_csrf"
LANGUAGE_COOKIE = "memberops_lang"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 8 * 3600
LANGUAGE_SECONDS = 365 * 86400
# Whether cookies are Secure even on plain HTTP (behind a proxy that terminates TLS).
SECURE: web.AppKey[bool] = web.AppKey("secure_cookies", bool)


def token_of(request: web.Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE, "")
    return token or None


def language_of(request: web.Request) -> str:
    return i18n.normalise(request.cookies.get(LANGUAGE_COOKIE))


def _secure(request: web.Request) -> bool:
    return request.secure or request.app.get(SECURE, False)


def _set(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="Strict", secure=_secure(request)
    )


def sign_in(response: web.StreamResponse, request: web.Request, token: str) -> None:
    _set(response, request, SESSION_COOKIE, token, SESSION_SECONDS)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")


def sign_out(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def set_language(response: web.StreamResponse, request: web.Request, language: str) -> None:
    _set(response, request, LANGUAGE_COOKIE, i18n.normalise(language), LANGUAGE_SECONDS)


def csrf_for(token: str) -> str:
    """The CSRF token of the session whose tenant token is `token`."""
    return hmac.new(token.encode(), b"memberops-console-csrf", hashlib.sha256).hexdigest()


def login_csrf(request: web.Request, response: web.StreamResponse) -> str:
    """The sign-in form's CSRF value: the one its cookie holds, or a new one set on `response`."""
    value = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    _set(response, request, LOGIN_CSRF_COOKIE, value, 3600)
    return value


def form_csrf_ok(request: web.Request, submitted: str) -> bool:
    """Whether a POST's CSRF field is right for this session (or, signed out, this sign-in form)."""
    token = token_of(request)
    expected = csrf_for(token) if token else request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return bool(expected) and hmac.compare_digest(expected.encode(), submitted.encode())


def same_origin(request: web.Request) -> bool:
    """A POST whose Origin header (when the browser sends one) is this console itself."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.partition("://")[2] == request.host


def safe_next(target: str | None) -> str:
    """A path on this console to go back to; anything else (another site) becomes the overview."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"
