"""``GET /``: the dashboard, a static page; its data comes from the API and Socket.IO.

The page and its files need no token (the data does). A strict Content-Security-Policy
allows scripts, styles and connections to this origin only: the libraries are vendored
under ``static/vendor`` (``scripts/vendor-assets.sh``), nothing loads from a CDN.
"""

from flask import Blueprint, Response, render_template

bp = Blueprint("dashboard", __name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@bp.get("/")
def dashboard() -> Response:
    response = Response(render_template("dashboard.html"))
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
