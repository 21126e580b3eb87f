# Sourced by the device-call scripts (benchmarks/session*_side.sh): `steps N:seconds ...` runs each step
# of the calling script ("$0" N) under its own time limit with its files under $OUT/w, then packs them in
# one tarball, $OUT/calls_$n.tar.gz (the device returns at most 8 files per call); one line per step in
# $OUT/steps.txt. Sourcing it also sets the calls' environment: this checkout first on the path, Triton's
# cache in /tmp (kept between the calls while the machine is warm), and $OUT (default /tmp/side_out).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
OUT=${OUT:-/tmp/side_out}
mkdir -p "$OUT"
steps() {
    local s W="$OUT/w"
    mkdir -p "$W"
    for s in "$@"; do
        T0=$(date +%s)
        OUT="$W" timeout "${s#*:}" bash "$0" "${s%%:*}" > "$W/side_${s%%:*}.log" 2>&1
        echo "step ${s%%:*} rc=$? in $(( $(date +%s) - T0 )) s" | tee -a "$OUT/steps.txt"
    done
    tar czf "$OUT/calls_$n.tar.gz" -C "$W" . && rm -rf "$W"
}
