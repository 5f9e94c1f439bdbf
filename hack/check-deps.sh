#!/usr/bin/env bash
# Fails when the companion app depends on the operator crate (normal or build
# dependencies): the app shares only the API crate, ladder-crds. The one
# dev-dependency (app/tests/operator_wiring.rs renders with the operator) is
# allowed, because it never reaches the app's binary.
set -euo pipefail
cd "$(dirname "$0")/.."
deps="$(cargo tree -p ladder-app --locked -e normal,build --prefix none --format '{p}' | awk '{print $1}' | sort -u)"
if grep -qx 'ladder-operator' <<<"$deps"; then
  echo "error: ladder-app depends on ladder-operator; share types through ladder-crds instead" >&2
  cargo tree -p ladder-app --locked -e normal,build -i ladder-operator >&2 || true
  exit 1
fi
grep -qx 'ladder-crds' <<<"$deps" || { echo "error: ladder-app no longer depends on ladder-crds?" >&2; exit 1; }
echo "ladder-app depends on ladder-crds, not on ladder-operator"
