#!/usr/bin/env bash
# Check that a change leaves the job's output unchanged: build the same small input with the code
# of git revision REV and with the working tree, then compare every shard and stats.json byte for
# byte. Random weights (seeded) and small settings, on 3 s cuts of two real clips from the media
# folder ($TH_MEDIA_DIR, default ../shared/media). About 4 minutes per build on 2 cores.
#
#   scripts/same_shards.sh REV [REV2]   e.g. scripts/same_shards.sh HEAD~1   (REV2: default the working tree)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
REV=${1:?usage: scripts/same_shards.sh REV [REV2]}
REV2=${2:-}
MEDIA=${TH_MEDIA_DIR:-$REPO/../shared/media}
PY=$REPO/.venv/bin/python
WORK=$(mktemp -d)
trap 'for t in rev rev2; do git -C "$REPO" worktree remove --force "$WORK/$t" >/dev/null 2>&1 || true; done; rm -rf "$WORK"' EXIT

for name in lp_d20.mp4 lp_s13.mp4; do
  "$PY" - "$MEDIA/$name" "$WORK/$name" <<'PYCUT'
import sys, av
# Copy the first 3 s of the video and audio packets (no re-encoding: the input stays the same file).
src, dst = av.open(sys.argv[1]), av.open(sys.argv[2], "w")
streams = {s.index: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
for packet in src.demux(*[s for s in src.streams if s.index in streams]):
    if packet.dts is None or packet.pts is None:
        continue
    if float(packet.pts * packet.time_base) >= 3.0:
        continue
    packet.stream = streams[packet.stream.index]
    dst.mux(packet)
dst.close()
PYCUT
  echo "$WORK/$name" >> "$WORK/list.txt"
done

build() {  # build CODE_DIR OUT
  (cd "$1" && PYTHONPATH="$1" RAY_AUTH_MODE=disabled "$PY" pipeline/build_shards.py --input "$WORK/list.txt" \
    --output "$2" --random-weights clips.min_len_s=1.0 clips.max_len_s=1.5 clips.cut_margin_s=0.1 \
    ray.num_cpus=2 ray.torch_threads=1 decode.max_side=480 faces.backend=haar filters.faces.min_face_px=32 \
    filters.quality.metric=piqe filters.quality.n_frames=2 filters.quality.threshold=60 \
    filters.quality.mode=score filters.sync.mode=score filters.head_motion.mode=score \
    models.audio_encoder.random_config=small progress.enabled=false > "$2.log" 2>&1) \
    || { echo "build in $1 failed; log: $2.log" >&2; tail -20 "$2.log" >&2; exit 1; }
}
git worktree add --detach "$WORK/rev" "$REV" >/dev/null
build "$WORK/rev" "$WORK/out_rev"
if [ -n "$REV2" ]; then
  git worktree add --detach "$WORK/rev2" "$REV2" >/dev/null
  build "$WORK/rev2" "$WORK/out_tree"
else
  build "$REPO" "$WORK/out_tree"
fi
digests() { (cd "$1" && sha256sum shards/*.tar stats.json); }
if diff <(digests "$WORK/out_rev") <(digests "$WORK/out_tree"); then
  echo "same shards: $(ls "$WORK/out_tree/shards" | wc -l) shard(s) and stats.json identical to $REV's"
else
  echo "the shards differ from $REV" >&2; exit 1
fi
