#!/usr/bin/env bash
# The analyst console in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
# driven over WebDriver by Python `selenium`), against `warden demo --keep-running`: the demo
# prints the console's address and sign-in tokens, exactly what a person would use.
# tests/console/browser.py does the checking; screenshots go to target/console-screenshots/.
#
#   tests/console/run.sh                 # target/debug/warden, python3 with `selenium` installed
#   WARDEN=target/release/warden PYTHON=target/ci-venv/bin/python tests/console/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

warden="${WARDEN:-target/debug/warden}"
python="${PYTHON:-python3}"
[ -x "$warden" ] || { echo "no $warden: run 'cargo build' first" >&2; exit 3; }
command -v chromedriver > /dev/null || { echo "no chromedriver: apt-get install chromium chromium-driver" >&2; exit 3; }

tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

"$warden" demo --keep-running --data "$tmp/demo" > "$tmp/demo.out" 2> "$tmp/demo.log" &
pid=$!
for _ in $(seq 600); do grep -q '^the server and the lab keep running' "$tmp/demo.out" && break; sleep 0.2; done
grep -q '^the server and the lab keep running' "$tmp/demo.out" || { cat "$tmp/demo.out" "$tmp/demo.log" >&2; exit 1; }

mkdir -p target/console-screenshots
# The self-contained HTML reports of the demo's own log, opened as files.
"$warden" report autonomy --since all --output html --data "$tmp/demo" > "$tmp/autonomy-report.html"
"$warden" report controls --since all --output html --data "$tmp/demo" > "$tmp/controls-report.html"
# …and the report's own proposal (the EDR responder a level lower), simulated over the run.
cp -r examples/policy "$tmp/proposal"
sed -i '0,/^level = 3$/s//level = 2/' "$tmp/proposal/agents/edr-responder.toml"
"$warden" policy simulate "$tmp/proposal" --since all --output html --data "$tmp/demo" > "$tmp/simulation.html"
if ! "$python" tests/console/browser.py "$tmp/demo.out" target/console-screenshots \
    "$tmp/autonomy-report.html" "$tmp/controls-report.html" "$tmp/simulation.html"; then
  echo "demo server log (last lines):" >&2
  tail -30 "$tmp/demo.log" >&2
  exit 1
fi
