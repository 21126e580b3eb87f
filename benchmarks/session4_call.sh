#!/usr/bin/env bash
# The fourth session's side jobs (benchmarks/session4_side.sh) in one device call; everything they
# write is packed into $OUT/s4.tgz (a call brings back only a few files).
export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc
FINAL=$OUT; export OUT=/tmp/s4; mkdir -p $OUT; T0=$(date +%s)
{ nvidia-smi --query-gpu=name --format=csv,noheader; git log -1 --format=%h; } > $OUT/card.txt
for n in ${JOBS:-4 1 2 3 5 6}; do
  timeout "${JOB_S:-110}" bash benchmarks/session4_side.sh $n > $OUT/side_$n.log 2>&1
  echo "side $n rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/card.txt
  [ $(( $(date +%s) - T0 )) -gt "${CALL_S:-420}" ] && break
done
tar czf "$FINAL/s4.tgz" -C /tmp s4; cp $OUT/card.txt "$FINAL/"; cat $OUT/card.txt
