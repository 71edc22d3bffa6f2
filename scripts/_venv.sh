# Sourced by scripts/*: create ./.venv on first use and install tracehouse into it from the lock file.
#
#   source scripts/_venv.sh [server|dev]     (default dev: the server extras plus the test tools)
#
# What is installed is exactly what uv.lock names (uv sync --frozen): an upstream release cannot change
# it. uv itself is pinned, with hashes, in scripts/uv-requirements.txt and bootstrapped into ./.tools.
# The install is redone only when uv.lock or pyproject.toml change (the stamp is their hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRACEHOUSE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRA="${1:-dev}"
TOOLS="$ROOT/.tools"
UV="$TOOLS/bin/uv"
say() { printf '%s\n' "$*" >&2; }

if [ ! -x "$UV" ]; then
  say "tracehouse: installing the pinned uv into .tools/ (once)"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
    -r "$ROOT/scripts/uv-requirements.txt" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  [ -x "$UV" ] || { say "tracehouse: could not install uv"; exit 1; }
fi

stamp_hash="$(cat "$ROOT/uv.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
stamp="$VENV/.tracehouse-$EXTRA-$stamp_hash"
if [ ! -f "$stamp" ]; then
  say "tracehouse: installing the locked '$EXTRA' environment into ${VENV#"$ROOT"/} (uv sync --frozen)"
  # 'dev' is exact (a test run sees only what the lock names); 'server' keeps extra packages, so
  # starting the pipeline never uninstalls the test tools of an earlier `scripts/check`.
  exact=()
  [ "$EXTRA" = "dev" ] || exact=(--inexact)
  UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON_DOWNLOADS=never "$UV" sync --project "$ROOT" --frozen \
    --extra "$EXTRA" --python "$PY" "${exact[@]}" --quiet
  rm -f "$VENV"/.tracehouse-"$EXTRA"-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export UV="$UV"
cd "$ROOT"
