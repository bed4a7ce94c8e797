#!/usr/bin/env bash
# A/B: loadgen before (be0b11e) and after (a761644) the h2client change, and h2load, interleaved
# per round, same upstream (loadgen upstream --body-bytes 100 on CPU 1), generators on CPU 0.
set -euo pipefail
OLD=$1 NEW=$2 ROUNDS=${3:-5}
tmp=$(mktemp -d)
taskset -c 1 "$NEW" upstream --listen 127.0.0.1:0 --body-bytes 100 > "$tmp/up" & UP=$!
trap 'kill $UP; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do [ -s "$tmp/up" ] && break; sleep 0.1; done
A=$(sed -n 's/^listening //p' "$tmp/up")
echo "ab: $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg); old=$OLD new=$NEW"
echo "(odd rounds: h2load, old, new; even rounds: h2load, new, old)"
echo "low: 200 req/s, 5 s, h2c, 1 connection x 1 stream: service p50 us (h2load: its log p50); cost: closed loop h2c 1 x 10 streams 5 s"
for r in $(seq "$ROUNDS"); do
  rm -f "$tmp/h2.log"
  taskset -c 0 h2load -n 1000 -c 1 -m 1 --rps 200 --log-file="$tmp/h2.log" "http://$A/" > /dev/null 2>&1
  h=$(python3 -c "l=sorted(int(x.split('\t')[2]) for x in open('$tmp/h2.log') if x.count('\t')==2); print(l[(len(l)-1)//2], len(l))")
  line="low  $r h2load p50 $h"
  order="old new"; [ $((r % 2)) = 0 ] && order="new old"
  for v in $order; do
    b=$OLD; [ $v = new ] && b=$NEW
    taskset -c 0 "$b" run --url "http://$A/" --http2 --connections 1 --streams 1 --rate 200 --duration 5s --warmup 0s --max-lag 25ms --quiet --allow-invalid --json "$tmp/l.json" > /dev/null
    line="$line  $v p50 $(python3 -c "import json; j=json.load(open('$tmp/l.json')); print(round(j['latency']['uncorrected']['p50_us']), j['counts']['responses'])")"
  done
  echo "$line"
  line="cost $r"
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 h2load -c 1 -m 10 -D 5 "http://$A/" > "$tmp/h2.out" 2>&1
  read -r u s < "$tmp/t"; n=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$tmp/h2.out")
  line="$line h2load $n u $u s $s $(python3 -c "print(round($n/($u+$s)))")"
  for v in $order; do
    b=$OLD; [ $v = new ] && b=$NEW
    /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 "$b" run --closed --http2 --url "http://$A/" --connections 1 --streams 10 --duration 5s --warmup 0s --quiet --json "$tmp/l.json" > /dev/null
    read -r u s < "$tmp/t"; n=$(python3 -c "import json; print(json.load(open('$tmp/l.json'))['counts']['responses'])")
    line="$line  $v $n u $u s $s $(python3 -c "print(round($n/($u+$s)))")"
  done
  echo "$line"
done
