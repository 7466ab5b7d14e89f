#!/usr/bin/env bash
# Flame graphs of the segments and journeys processes while the whole-pipeline benchmark loads them.
#
#   bench/profiles/record.sh TAG [SECONDS]
#
# Runs `onefold bench pipeline --rate 1000 --seconds 20` and, once its sustained load starts, samples
# each process for SECONDS (default 25: the load and the start of the drain) with py-spy at 100 Hz,
# idle threads included (--idle is not given: waiting shows as its own frames), without pausing the
# process (--nonblocking). Writes bench/profiles/{segments,journeys}-TAG.svg beside the benchmark's
# report (pipeline-TAG.txt). Needs py-spy on PATH (`pip install py-spy`; not a project dependency).
set -euo pipefail
tag=${1:?usage: record.sh TAG [SECONDS]}
seconds=${2:-25}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
report="$here/pipeline-$tag.txt"
cd "$root"
.venv/bin/onefold bench pipeline --rate 1000 --seconds 20 2> "$report" &
bench=$!
until grep -q 'sustained load' "$report" 2>/dev/null; do sleep 0.5; done
for service in segments journeys; do
  pid=$(pgrep -f "$root/.venv/bin/python -m onefold.$service" | head -1)
  py-spy record --pid "$pid" --duration "$seconds" --rate 100 --nonblocking \
    --output "$here/$service-$tag.svg" > /dev/null &
done
wait "$bench"
wait
