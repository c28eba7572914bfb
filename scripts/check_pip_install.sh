#!/usr/bin/env bash
# Install whisper-at the way a user does and prove that it works.
#
#   bash scripts/check_pip_install.sh                 # full check of this working tree
#   bash scripts/check_pip_install.sh --size-of REV   # size only, of git revision REV
#
# The full check builds the wheel of the working tree (from a clean copy of the files git
# tracks or would track, so stale build/ or *.egg-info folders cannot hide missing package
# data), creates a fresh virtual environment in a temporary folder, installs torch==2.13.0
# (the CPU build) and then the wheel WITHOUT extras, and from a folder outside the repo runs:
#   a. whisper-at on examples/librivox_sense_and_sensibility.wav: transcript words, tags, files
#   b. whisper-at tag on the same file
#   c. the README's Python example (load_model, transcribe, audio_tag, parse_at_label)
#   d. research subcommands without the [research] extra: exit 2, the install hint, no traceback
#      (and `whisper-at corpus --help`, which needs no extra, works); `whisper-at batch`
#      without the [ray] extra likewise
#   e. the research dependencies (scikit-learn, scipy, matplotlib, jiwer) and ray are not installed
#   f. whisper-at serve: /health, the page at / (its files ship in the wheel) and a
#      transcription of the example over HTTP
# and prints the size of the environment's site-packages, its biggest distributions and
# `pip list`. Exits non-zero, saying which check failed, on any failure. The temporary
# folder (venv, wheel, outputs, whisper-at's cache) is removed at exit.
#
# --size-of REV builds the wheel of a git revision (git archive) instead, installs it the
# same way and reports the sizes only (older revisions need not pass the checks): that is
# how docs/install.md measured the previous layout (`--size-of 4165905`).
#
# Needs python3 (with venv) and network access to PyPI; no stdin. PYTHON overrides python3.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
AUDIO="$REPO/examples/librivox_sense_and_sensibility.wav"
START=$SECONDS

SIZE_OF=""
case "${1:-}" in
    "") ;;
    --size-of)
        SIZE_OF="${2:?--size-of needs a git revision}"
        ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--size-of REV]" >&2
        exit 2
        ;;
esac

WORK="$(mktemp -d "${TMPDIR:-/tmp}/whisper-at-pip-check.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "check_pip_install: FAILED: $*" >&2
    exit 1
}
step() { echo "== check_pip_install: $* ($((SECONDS - START)) s)"; }

# The log of a failed command is shown before failing, so CI's output says what went wrong.
show() {
    echo "---- $1" >&2
    tail -n 60 "$1" >&2
    echo "----" >&2
}

# --- the sources to build: a clean copy, never the repo folder itself ---------------------
SRC="$WORK/src"
mkdir -p "$SRC"
if [ -n "$SIZE_OF" ]; then
    step "sources of revision $SIZE_OF (git archive)"
    git -C "$REPO" archive --format=tar "$SIZE_OF" | tar -xf - -C "$SRC"
elif git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    step "sources of the working tree (files git tracks or would track)"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        tar --null --ignore-failed-read -T - -cf -) 2>/dev/null | tar -xf - -C "$SRC"
else
    step "sources of $REPO (not a git checkout: copied whole, less .venv)"
    tar -C "$REPO" --exclude=./.venv --exclude=./build --exclude='*.egg-info' -cf - . |
        tar -xf - -C "$SRC"
fi
[ -f "$SRC/pyproject.toml" ] || fail "no pyproject.toml in the sources copied from $REPO"

# --- a fresh virtual environment ------------------------------------------------------------
VENV="$WORK/venv"
step "fresh virtual environment ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$VENV" || fail "$PYTHON -m venv failed (Debian: apt-get install python3-venv)"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --no-input --disable-pip-version-check)

step "building the wheel (pip wheel --no-deps)"
"${PIP[@]}" wheel -q --no-deps -w "$WORK/dist" "$SRC" >"$WORK/wheel.log" 2>&1 ||
    { show "$WORK/wheel.log"; fail "building the wheel failed"; }
WHEEL="$(find "$WORK/dist" -name "whisper_at-*.whl" 2>/dev/null | head -n 1 || true)"
[ -n "$WHEEL" ] || fail "pip wheel made no whisper_at-*.whl"
echo "wheel: $(basename "$WHEEL") ($(du -m "$WHEEL" | cut -f1) MB)"

# The CPU build of PyTorch first, pinned: anything else would fetch a multi-GB CUDA build.
step "pip install torch==2.13.0"
"${PIP[@]}" install -q "torch==2.13.0" >"$WORK/torch.log" 2>&1 ||
    { show "$WORK/torch.log"; fail "pip install torch==2.13.0 failed"; }
step "pip install the wheel, no extras"
"${PIP[@]}" install -q "$WHEEL" >"$WORK/install.log" 2>&1 ||
    { show "$WORK/install.log"; fail "pip install $(basename "$WHEEL") failed"; }
"${PIP[@]}" check || fail "pip check: the environment's requirements are inconsistent"

report_size() {
    local site
    site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "== installed size of a plain install: site-packages $(du -sm "$site" | cut -f1) MB" \
        "(whole venv $(du -sm "$VENV" | cut -f1) MB)"
    echo "-- biggest distributions (MB, from their RECORD files):"
    "$VPY" - <<'EOF'
import importlib.metadata as md
import os

rows = []
for dist in md.distributions():
    size = 0
    for f in dist.files or []:
        try:
            size += os.path.getsize(f.locate())
        except OSError:
            pass
    rows.append((size, dist.metadata["Name"], dist.version))
rows.sort(reverse=True)
for size, name, version in rows[:12]:
    print(f"{size / 2**20:8.1f}  {name}=={version}")
print(f"{sum(r[0] for r in rows) / 2**20:8.1f}  all {len(rows)} distributions")
EOF
    echo "-- pip list:"
    "${PIP[@]}" list
}

if [ -n "$SIZE_OF" ]; then
    report_size
    # for information only: does that revision's plain install transcribe the example?
    mkdir -p "$WORK/run" && cd "$WORK/run"
    set +e
    WHISPER_AT_CACHE="$WORK/cache" "$VENV/bin/whisper-at" "$SRC/examples/$(basename "$AUDIO")" \
        --output-dir "$WORK/out" </dev/null >"$WORK/smoke.log" 2>&1
    rc=$?
    set -e
    echo "-- (information, not a check) whisper-at on the example: exit $rc; last lines:"
    tail -n 3 "$WORK/smoke.log"
    step "done: sizes of revision $SIZE_OF"
    exit 0
fi

# --- the checks, from a folder outside the repo, with a fresh whisper-at cache --------------
RUN="$WORK/run"
mkdir -p "$RUN"
cd "$RUN"
export WHISPER_AT_CACHE="$WORK/cache" # a new user's: nothing converted yet
export PATH="$VENV/bin:$PATH"
hash -r
[ -f "$AUDIO" ] || fail "the example audio $AUDIO is missing"
[ "$(command -v whisper-at)" = "$VENV/bin/whisper-at" ] ||
    fail "the whisper-at entry point is not installed in the venv"

# Words of the example (a LibriVox reading of Sense and Sensibility, 7 s) that the bundled
# tiny.en model transcribes: "And Mr. John Dashwood had then leisure to consider how much
# there might be prudently in his power to do for them." Checked case-insensitively.
WORDS=(dashwood leisure consider prudently)

step "a. whisper-at FILE --output-dir OUT"
OUT="$WORK/out"
if ! whisper-at "$AUDIO" --output-dir "$OUT" >"$WORK/a.log" 2>&1; then
    show "$WORK/a.log"
    fail "a. whisper-at $AUDIO exited non-zero"
fi
cat "$WORK/a.log"
grep -q "Traceback" "$WORK/a.log" && fail "a. whisper-at printed a traceback"
for word in "${WORDS[@]}"; do
    grep -qi "$word" "$WORK/a.log" || fail "a. the transcript lacks the word '$word'"
done
grep -q "^sound events:" "$WORK/a.log" || fail "a. no 'sound events:' block"
grep -A3 "^sound events:" "$WORK/a.log" | grep -q "Speech [01]\.[0-9][0-9]" ||
    fail "a. the sound events do not tag Speech"
stem="$(basename "${AUDIO%.*}")"
for suffix in txt json tags.tsv; do
    [ -s "$OUT/$stem.$suffix" ] || fail "a. $OUT/$stem.$suffix was not written"
done
grep -qi "${WORDS[0]}" "$OUT/$stem.txt" || fail "a. $stem.txt lacks '${WORDS[0]}'"

step "b. whisper-at tag FILE"
if ! whisper-at tag "$AUDIO" --output-dir "$WORK/out-tag" >"$WORK/b.log" 2>&1; then
    show "$WORK/b.log"
    fail "b. whisper-at tag exited non-zero"
fi
cat "$WORK/b.log"
grep -q "Traceback" "$WORK/b.log" && fail "b. whisper-at tag printed a traceback"
grep -Eq '^\[ *0\.0s -> .*Speech [01]\.[0-9]{2}' "$WORK/b.log" ||
    fail "b. whisper-at tag printed no Speech tag for the first window"
[ -s "$WORK/out-tag/$stem.tags.tsv" ] || fail "b. $stem.tags.tsv was not written"

step "c. the README's Python example"
if ! "$VPY" - "$AUDIO" "${WORDS[@]}" >"$WORK/c.log" 2>&1 <<'EOF'; then
import sys

import whisper_at

path, words = sys.argv[1], sys.argv[2:]
model = whisper_at.load_model("tiny.en")
result = model.transcribe(path, at_time_res=10)
text = result["text"]
print(text.strip())
missing = [w for w in words if w not in text.lower()]
assert not missing, f"the transcript lacks {missing}"
assert result["segments"] and result["language"] == "en", result["language"]
tag = result["audio_tag"]
assert tag is not None, "no audio_tag: no tagging head"
print("audio_tag shape", tuple(tag.shape))
assert tag.ndim == 2 and tag.shape[0] >= 1 and tag.shape[1] > 1, tag.shape
top = whisper_at.parse_at_label(result, top_k=3, p_threshold=-1)
print(top[0])
labels = [name for window in top for name, *_ in window["audio tags"]]
assert "Speech" in labels, labels
tagging = model.tag(path, at_time_res=10)
window = next(iter(tagging.windows(top_k=3, threshold=0.3)))
print(window.start, window.end, [(t.label, round(t.probability, 2)) for t in window.tags])
assert "Speech" in [t.label for t in window.tags]
print("python example: ok")
EOF
    show "$WORK/c.log"
    fail "c. the README's Python example failed"
fi
cat "$WORK/c.log"

step "d. commands of optional extras, without them"
# expect_extra EXTRA ARGS...: `whisper-at ARGS` exits 2, names `pip install 'whisper-at[EXTRA]'`
# and prints no traceback
expect_extra() {
    local extra=$1
    shift
    set +e
    whisper-at "$@" >"$WORK/d.log" 2>&1 </dev/null
    local rc=$?
    set -e
    echo "whisper-at $* -> exit $rc: $(head -n 3 "$WORK/d.log")"
    [ "$rc" = 2 ] || { show "$WORK/d.log"; fail "d. whisper-at $* exited $rc, not 2"; }
    grep -qF "pip install 'whisper-at[$extra]'" "$WORK/d.log" ||
        { show "$WORK/d.log"; fail "d. whisper-at $* does not name the $extra extra"; }
    grep -q "Traceback" "$WORK/d.log" &&
        { show "$WORK/d.log"; fail "d. whisper-at $* printed a traceback"; }
    return 0
}
for command in "train --help" "analyze robustness" "evaluate --help" "features extract --help"; do
    # shellcheck disable=SC2086  # the words of $command are the arguments
    expect_extra research $command
done
# `whisper-at batch` runs on Ray, an optional extra
expect_extra ray batch "$AUDIO" --out "$WORK/batch-out"

# the corpus builder needs only the runtime (and tinysoundfont for its music)
whisper-at corpus --help >"$WORK/d.log" 2>&1 </dev/null ||
    { show "$WORK/d.log"; fail "d. whisper-at corpus --help failed without the research extra"; }
echo "whisper-at corpus --help -> exit 0"

step "e. the research dependencies are not installed"
for module in sklearn scipy matplotlib jiwer ray; do
    if "$VPY" -c "import $module" >/dev/null 2>&1; then
        fail "e. 'import $module' works in a plain install: the runtime pulls a research dependency"
    fi
    echo "import $module: not installed (as it should be)"
done
# ... and the runtime imports without them
"$VPY" -c "import whisper_at, whisper_at.cli, whisper_at.engines.ct2" ||
    fail "e. the runtime does not import in a plain install"

step "f. whisper-at serve"
PORT="$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
whisper-at serve --port "$PORT" --temp-dir "$WORK/serve-tmp" >"$WORK/f.log" 2>&1 </dev/null &
SERVER_PID=$!
if ! "$VPY" - "$PORT" "$AUDIO" "${WORDS[0]}" >"$WORK/f-client.log" 2>&1 <<'EOF'; then
import http.client
import json
import sys
import time
import uuid
from pathlib import Path

port, audio, word = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for _ in range(240):  # the model loads first
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/health")
        health = json.loads(connection.getresponse().read())
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the server did not answer /health within 2 minutes")
print("health", health)
connection.request("GET", "/")
page = connection.getresponse().read().decode()
assert "<title>whisper-at</title>" in page, page[:200]
for asset in ("app.js", "style.css"):
    connection.request("GET", "/" + asset)
    assert connection.getresponse().read(), asset
boundary = uuid.uuid4().hex
body = (
    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{audio.name}"'
    "\r\n\r\n"
).encode() + audio.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
connection.request("POST", "/v1/audio/transcriptions", body, headers)
answer = json.loads(connection.getresponse().read())
print(answer)
assert word in answer["text"].lower(), answer
print("serve: ok")
EOF
    show "$WORK/f.log"
    show "$WORK/f-client.log"
    fail "f. whisper-at serve did not answer as it should"
fi
cat "$WORK/f-client.log"
kill "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
if grep -q "Traceback" "$WORK/f.log"; then
    show "$WORK/f.log"
    fail "f. whisper-at serve printed a traceback"
fi

report_size
step "all checks passed"
