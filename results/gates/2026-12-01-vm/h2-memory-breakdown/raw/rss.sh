#!/bin/bash
# usage: rss.sh LABEL BINARY ENVSPEC  -> holds h2 then h1 TLS connections (2000 warm-up, then 1000 x2 each)
label=$1; bin=$2; shift 2
env "$@" $bin --config proxy.toml --workers 1 > rss.$label.proxy.out 2>&1 &
pid=$!; echo $pid > rss.$label.pid; sleep 1
port=$(grep -o '127.0.0.1:[0-9]*' rss.$label.proxy.out | head -1 | cut -d: -f2)
L=/work/main/target/release/loadgen
$L hold --http2 --url https://localhost:$port/ --ca ca.pem --pid $pid --connections 2000,1000,1000 --settle 2s > rss.$label.h2.txt 2>&1
$L hold --url https://localhost:$port/ --ca ca.pem --pid $pid --connections 2000,1000,1000 --settle 2s > rss.$label.h1.txt 2>&1
kill $pid; wait $pid 2>/dev/null
echo "== $label ($*)"; grep -A4 'connections  ' rss.$label.h2.txt | sed 's/^/h2 /'; grep -A4 'connections  ' rss.$label.h1.txt | sed 's/^/h1 /'
