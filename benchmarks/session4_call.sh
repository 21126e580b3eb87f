export PYTHONPATH=. PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc
mkdir -p $OUT; T0=$(date +%s)
{ nvidia-smi --query-gpu=name --format=csv,noheader; git log -1 --format=%h; } > $OUT/card.txt
for n in 4 1 2 3 5 6; do
  timeout 110 bash benchmarks/session4_side.sh $n > $OUT/side_$n.log 2>&1; echo "side $n rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/card.txt
  [ $(( $(date +%s) - T0 )) -gt 420 ] && break
done
cat $OUT/card.txt
