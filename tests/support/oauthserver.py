"""
A local OAuth 2.0 provider for the tests, on loopback (a real HTTP server in
a thread): the token endpoint with the client-credentials, refresh-token,
authorization-code (PKCE) and device-code grants, an authorization endpoint
that consents at once (it redirects to the client's loopback listener with
a code), and a device-authorization endpoint.

    with OAuthServer({"app-id": "app-secret"}, expiresIn=3) as provider:
        provider.tokenUrl                 # http://127.0.0.1:PORT/token
        provider.valid(token)             # an access token it issued, not expired
        provider.grants("refresh_token")  # the token requests of that grant so far
        provider.mode = "unavailable"     # 503 from now on ("refuse": 401 invalid_client)

Refresh tokens are issued by consent (L{issueRefreshToken}, or the
authorization-code and device grants); with C{rotate}, each refresh gives a
new one, and with C{strict} the old one stops working (as strict rotation
does), so a client must keep the newest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = ["OAuthServer"]


class OAuthServer:
    """
    @param clients: client id → client secret (C{None} for a public client).
    @param expiresIn: seconds an access token lasts.
    @param rotate: a refresh gives a new refresh token.
    @param strict: with C{rotate}, a refresh token works once.
    """

    def __init__(
        self, clients: dict[str, str | None], expiresIn: float = 3600, rotate: bool = False, strict: bool = False
    ):
        self.clients = dict(clients)
        self.expiresIn = expiresIn
        self.rotate = rotate
        self.strict = strict
        self.mode = "ok"  # or "unavailable" (503), "refuse" (401 invalid_client)
        self._lock = threading.Lock()
        self._access: dict[str, float] = {}  # token -> monotonic expiry
        self._refresh: dict[str, str] = {}  # refresh token -> client id
        self._codes: dict[str, tuple[str, str, str]] = {}  # code -> (client id, redirect URI, challenge)
        self._devices: dict[str, dict] = {}  # device code -> {client, user_code, approved}
        self._requests: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                basic = self.headers.get("Authorization", "")
                if basic.startswith("Basic "):
                    user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
                    form.setdefault("client_id", user)
                    form.setdefault("client_secret", password)
                status, body = owner._post(urlsplit(self.path).path, form)
                self._answer(status, body)

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path != "/authorize":
                    return self._answer(404, {"error": "not_found"})
                location = owner._authorize(query)
                if location is None:
                    return self._answer(400, {"error": "invalid_request"})
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="oauth-server", daemon=True)

    # -- lifecycle --

    def __enter__(self) -> OAuthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tokenUrl(self) -> str:
        return f"{self.base}/token"

    # -- what the tests ask --

    def valid(self, token: str) -> bool:
        """An access token this server issued that has not expired."""
        with self._lock:
            return self._access.get(token, 0.0) > time.monotonic()

    def grants(self, grant: str | None = None) -> list[dict[str, str]]:
        """The token requests so far (their forms), of one grant type or all."""
        with self._lock:
            return [r for r in self._requests if grant is None or r.get("grant_type") == grant]

    def issueRefreshToken(self, clientId: str) -> str:
        """A refresh token for C{clientId}, as a user's consent would give."""
        token = "rt-" + secrets.token_urlsafe(12)
        with self._lock:
            self._refresh[token] = clientId
        return token

    def refreshTokens(self) -> set[str]:
        """The refresh tokens that work now."""
        with self._lock:
            return set(self._refresh)

    def approveDevice(self, userCode: str) -> None:
        """The user entered C{userCode} and consented."""
        with self._lock:
            for device in self._devices.values():
                if device["user_code"] == userCode:
                    device["approved"] = True

    # -- the endpoints --

    def _post(self, path: str, form: dict[str, str]) -> tuple[int, dict]:
        with self._lock:
            self._requests.append(dict(form, path=path))
            if self.mode == "unavailable":
                return 503, {"error": "temporarily_unavailable"}
            if self.mode == "refuse":
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}
            if path == "/devicecode":
                return self._deviceCode(form)
            if path != "/token":
                return 404, {"error": "not_found"}
            client = form.get("client_id", "")
            if client not in self.clients:
                return 401, {"error": "invalid_client", "error_description": "unknown client"}
            secret = self.clients[client]
            if secret is not None and form.get("client_secret") != secret:
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}
            grant = form.get("grant_type")
            if grant == "client_credentials":
                return 200, self._tokens(client, refresh=False)
            if grant == "refresh_token":
                return self._refreshGrant(client, form.get("refresh_token", ""))
            if grant == "authorization_code":
                return self._codeGrant(client, form)
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                return self._deviceGrant(client, form.get("device_code", ""))
            return 400, {"error": "unsupported_grant_type"}

    def _tokens(self, client: str, refresh: bool) -> dict:
        access = "at-" + secrets.token_urlsafe(16)
        self._access[access] = time.monotonic() + self.expiresIn
        body = {"access_token": access, "token_type": "Bearer", "expires_in": self.expiresIn}
        if refresh:
            token = "rt-" + secrets.token_urlsafe(12)
            self._refresh[token] = client
            body["refresh_token"] = token
        return body

    def _refreshGrant(self, client: str, token: str) -> tuple[int, dict]:
        if self._refresh.get(token) != client:
            return 400, {"error": "invalid_grant", "error_description": "AADSTS70000: refresh token not valid"}
        if self.rotate and self.strict:
            del self._refresh[token]
        return 200, self._tokens(client, refresh=self.rotate)

    def _authorize(self, query: dict[str, str]) -> str | None:
        if query.get("response_type") != "code" or query.get("client_id") not in self.clients:
            return None
        redirect = query.get("redirect_uri", "")
        if urlsplit(redirect).hostname not in ("127.0.0.1", "localhost"):
            return None
        code = "code-" + secrets.token_urlsafe(8)
        with self._lock:
            self._codes[code] = (query["client_id"], redirect, query.get("code_challenge", ""))
        return redirect + ("&" if "?" in redirect else "?") + urlencode({"code": code, "state": query.get("state", "")})

    def _codeGrant(self, client: str, form: dict[str, str]) -> tuple[int, dict]:
        issued = self._codes.pop(form.get("code", ""), None)
        if issued is None or issued[0] != client or issued[1] != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant", "error_description": "bad code"}
        verifier = form.get("code_verifier", "").encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
        if issued[2] != challenge:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        return 200, self._tokens(client, refresh=True)

    def _deviceCode(self, form: dict[str, str]) -> tuple[int, dict]:
        device = "dc-" + secrets.token_urlsafe(8)
        user = secrets.token_hex(4).upper()
        self._devices[device] = {"client": form.get("client_id"), "user_code": user, "approved": False}
        return 200, {
            "device_code": device,
            "user_code": user,
            "verification_uri": f"{self.base}/device",
            "expires_in": 60,
            "interval": 1,
            "message": f"To sign in, open {self.base}/device and enter the code {user}.",
        }

    def _deviceGrant(self, client: str, code: str) -> tuple[int, dict]:
        device = self._devices.get(code)
        if device is None or device["client"] != client:
            return 400, {"error": "invalid_grant"}
        if not device["approved"]:
            return 400, {"error": "authorization_pending"}
        del self._devices[code]
        return 200, self._tokens(client, refresh=True)
