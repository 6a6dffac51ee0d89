#!/usr/bin/env bash
# Re-fetch the dashboard's browser libraries from npm and copy their dist files into
# k1/web/static/vendor/ (committed: the dashboard loads nothing from a CDN at run time).
#   scripts/vendor-assets.sh          # needs node + npm; writes k1/web/static/vendor/
# Bump a version here, run the script, check the dashboard, commit the vendored files.
set -euo pipefail
cd "$(dirname "$0")/.."

SOCKET_IO_CLIENT=4.8.4   # Socket.IO protocol 5, what Flask-SocketIO 5 / python-socketio 5 speak
CHART_JS=4.6.1

dest=k1/web/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

npm install --prefix "$work" --no-save --no-audit --no-fund --ignore-scripts \
    "socket.io-client@$SOCKET_IO_CLIENT" "chart.js@$CHART_JS" >/dev/null

mkdir -p "$dest"
cp "$work/node_modules/socket.io-client/dist/socket.io.min.js" "$dest/socket.io.min.js"
cp "$work/node_modules/chart.js/dist/chart.umd.min.js" "$dest/chart.umd.min.js"
cp "$work/node_modules/socket.io-client/LICENSE" "$dest/socket.io-client.LICENSE"
cp "$work/node_modules/chart.js/LICENSE.md" "$dest/chart.js.LICENSE.md"
cat > "$dest/VERSIONS" <<VERSIONS
socket.io-client $SOCKET_IO_CLIENT dist/socket.io.min.js
chart.js $CHART_JS dist/chart.umd.min.js
VERSIONS
echo "vendored into $dest:"; ls -l "$dest"
