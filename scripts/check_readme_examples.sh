#!/usr/bin/env bash
# Runs the README's quickstart (between <!-- quickstart:start/end -->) and the curl example of
# docs/pipeline.md (between <!-- curl-example:start/end -->) as they stand, in a scratch folder (and on a free port), and checks what
# they printed: predict's lines; the read's fields, the batch's results and the search. `make test` runs
# it; it needs the project's .venv and curl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() { pkill -P $$ >/dev/null 2>&1 || true; jobs -p | xargs -r kill >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
python3 - "$ROOT/README.md" "$PORT" "$ROOT" "$WORK" "$ROOT/docs/pipeline.md" <<'PY'
import re, sys
readme, port, root, work, pipeline = sys.argv[1:]
text = open(readme, encoding="utf-8").read() + open(pipeline, encoding="utf-8").read()
for name in ("quickstart", "curl-example"):
    block = re.search(rf"<!-- {name}:start -->\n```bash\n(.*?)```\n<!-- {name}:end -->", text, re.S)
    script = block.group(1).replace("8000", port).replace(".venv/bin/", f"{root}/.venv/bin/")
    script = script.replace("/tmp/scans", f"{work}/{name}-scans")
    open(f"{work}/{name}.sh", "w").write(f"set -euo pipefail\ncd {work}\n" + script)
PY
cd "$WORK"
timeout 300 bash "$WORK/quickstart.sh" >"$WORK/quick.txt" 2>"$WORK/quick-err.txt" || { tail -40 "$WORK/quick-err.txt"; exit 1; }
"$ROOT/.venv/bin/python" - "$WORK/quick.txt" <<'PY'
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
files = [line["file"].rsplit("/", 1)[1] for line in lines]
assert files == ["000000.jpg", "one.pdf", "000000.jpg", "000001.jpg", "one.pdf"], files
assert all(line["fields"]["document_type"] == "shipping_label" for line in lines), lines
print("README quickstart: predict read one scan, a PDF and a folder")
PY
timeout 600 bash "$WORK/curl-example.sh" >"$WORK/out.txt" 2>"$WORK/err.txt" || { tail -40 "$WORK/err.txt"; exit 1; }
"$ROOT/.venv/bin/python" - "$WORK/out.txt" <<'PY'
import json, sys
text, answers, decoder, at = open(sys.argv[1]).read(), [], json.JSONDecoder(), 0
while (at := text.find("{", at)) != -1:  # the answers, one after another (curl adds no newline)
    answer, at = decoder.raw_decode(text, at)
    answers.append(answer)
read, results, found = answers[0], answers[1], answers[2]
assert read["status"] == "finished" and read["pages"][0]["status"] == "done", read
assert read["pages"][0]["fields"].get("document_type"), read
assert [item["status"] for item in results["items"]] == ["done", "done"], results
assert all(item["fields"].get("document_type") for item in results["items"]), results
assert found["items"] and all(item["fields"]["document_type"] == "shipping_label" for item in found["items"]), found
print(f"README curl example: read 1 scan now, 2 in a batch, search found {len(found['items'])}")
PY
