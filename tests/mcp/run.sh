#!/usr/bin/env bash
# The official Python MCP SDK against a real `warden serve` with the lab behind it:
# tests/mcp/client.py does the checking; this starts what it talks to.
#
#   tests/mcp/run.sh                     # target/debug/warden, python3 with `mcp` installed
#   WARDEN=target/release/warden PYTHON=target/ci-venv/bin/python tests/mcp/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

warden="${WARDEN:-target/debug/warden}"
python="${PYTHON:-python3}"
[ -x "$warden" ] || { echo "no $warden: run 'cargo build' first" >&2; exit 3; }

tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

"$warden" init --data "$tmp/data" --output json > "$tmp/init.json"
admin="$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin_token"])' "$tmp/init.json")"
for f in examples/policy/agents/*.toml; do
  id="$(sed -n 's/^id = "\(.*\)"/\1/p' "$f")"
  "$warden" agent add "$id" --owner secops --purpose "mcp sdk test" --data "$tmp/data" > /dev/null
done
edr="$("$warden" agent token spiffe://acme.example/soc/edr-responder --ttl 1h --data "$tmp/data")"
identity="$("$warden" agent token spiffe://acme.example/soc/identity-responder --ttl 1h --data "$tmp/data")"
# The example bundle, but the identity responder's approvals expire in 2 s (the expiry scenario).
cp -r examples/policy "$tmp/policy"
sed -i 's/approval_expiry = "15m"/approval_expiry = "2s"/' "$tmp/policy/agents/identity-responder.toml"
grep -q 'approval_expiry = "2s"' "$tmp/policy/agents/identity-responder.toml"
phish="$("$warden" agent token spiffe://acme.example/soc/phish-triage --ttl 1h --data "$tmp/data")"
analyst="$("$warden" user add ana --role soc-analyst --data "$tmp/data" --output json \
  | "$python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

# The lab prints its address, then the keys `warden serve` needs as `export K=V` lines.
"$warden" lab serve --listen 127.0.0.1:0 > "$tmp/lab.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do [ "$(wc -l < "$tmp/lab.out")" -ge 7 ] && break; sleep 0.1; done
lab="$(sed -n 's/^lab estate listening on //p' "$tmp/lab.out")"
eval "$(grep '^export ' "$tmp/lab.out")"

urls=()
for tool in edr idp firewall mail ticketing siem; do urls+=(--tool-url "$tool=http://$lab"); done
# The lab's EDR also speaks MCP: an upstream whose tools examples/policy/mcp.toml maps.
cat > "$tmp/serve.toml" <<TOML
[[mcp.upstreams]]
name = "lab-edr"
url = "http://$lab/edr/mcp"
bearer = "secret:LAB_EDR_KEY"
TOML
"$warden" serve --data "$tmp/data" --policy "$tmp/policy" --listen 127.0.0.1:0 "${urls[@]}" \
  --config "$tmp/serve.toml" --mcp-hold 4s > "$tmp/serve.out" 2> "$tmp/serve.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$tmp/serve.out" && break; sleep 0.1; done
base="http://$(sed -n 's/^listening on //p' "$tmp/serve.out")"

for task in INC-7 INC-8 INC-9; do
  "$python" - "$base" "$admin" "$task" <<'PY'
import json, sys, urllib.request
base, token, task = sys.argv[1:4]
body = {"id": task, "title": "mcp sdk test", "trigger": {"source": "siem", "severity": "high"}}
req = urllib.request.Request(base + "/v1/tasks", json.dumps(body).encode(), method="POST",
    headers={"authorization": "Bearer " + token, "content-type": "application/json"})
urllib.request.urlopen(req, timeout=5)
PY
done

config="$("$python" -c 'import json,sys; print(json.dumps(dict(zip(["base","edr","phish","analyst","admin","warden","lab","identity"], sys.argv[1:]))))' \
  "$base" "$edr" "$phish" "$analyst" "$admin" "$(realpath "$warden")" "http://$lab" "$identity")"
if ! "$python" tests/mcp/client.py "$config"; then
  echo "server log (last lines):" >&2
  tail -20 "$tmp/serve.log" >&2
  exit 1
fi
