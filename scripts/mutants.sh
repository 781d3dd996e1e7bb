#!/usr/bin/env bash
# Mutation testing of the Raft core (issue 14): cargo-mutants changes core/src/raft.rs and
# core/src/log.rs one mutation at a time (an operator flipped, a branch removed, a function
# made to return a constant) and runs the core's tests against each. A mutant the tests do not
# fail is "missed": a rule nothing checks, unless the mutant is equivalent (core/mutants.md
# lists those, with why).
#
#   scripts/mutants.sh                  every mutant of raft.rs and log.rs (711 at 0e410be;
#                                       about 2-3 s each on 2 cores, 25-30 minutes in all)
#   scripts/mutants.sh --in-diff [REV]  only the mutants on lines changed since REV (default
#                                       HEAD~1): a change to the core is checked in minutes
#   MUTANTS_FILES="core/src/log.rs"     narrow the files; MUTANTS_SHARD=k/n runs shard k of n
#   scripts/mutants.sh --gate           the mutants on lines changed since the commit named in
#                                       core/mutants-base (the last full run), failing if one
#                                       is missed and not listed as equivalent: CI runs this
#   MUTANTS_CHAOS_SEEDS=N               then runs N chaos seeds against each missed mutant
#                                       (a fresh worktree, the madsim build), since some rules
#                                       are only reached under faults
#
# A missed mutant is "explained" when core/mutants-equivalent.txt lists it (by file and
# description, without the line number, which moves; core/mutants.md says why each is
# equivalent); the others are printed as unexplained.
#
# Results go to mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt, outcomes.json,
# unexplained.txt) and, with MUTANTS_CHAOS_SEEDS, mutants.out/chaos.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# A target dir of its own: cargo names a workspace member's artifacts the same whatever the
# directory it is built from, so mutants built from cargo-mutants' copies (and the chaos phase's
# worktree) would overwrite the tree's own test binaries in a shared one, and cargo would then
# run a mutant as if it were the tree's code.
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$HOME/.cache/raft-kv/mutants-target}"

files=(${MUTANTS_FILES:-core/src/raft.rs core/src/log.rs})
args=(--package raft-kv-core --no-shuffle)
for f in "${files[@]}"; do args+=(--file "$f"); done
# The invariant checks run only in debug builds and only assert: mutating them tests nothing.
args+=(--exclude-re 'check_invariants|check_progress|check_step|check_node|check_bounds|observed')
[[ -n ${MUTANTS_SHARD:-} ]] && args+=(--shard "$MUTANTS_SHARD")
gate=false
base=
case ${1:-} in
--in-diff) base=${2:-HEAD~1} ;;
--gate)
  gate=true
  base=$(tr -d '[:space:]' <core/mutants-base)
  ;;
esac
if [[ -n $base ]]; then
  diff=$(mktemp)
  git diff "$base" -- "${files[@]}" >"$diff"
  if [[ ! -s $diff ]]; then
    echo "mutants: no change to ${files[*]} since $base"
    exit 0
  fi
  args+=(--in-diff "$diff")
fi
# The version the equivalent list was written against: mutant names change between versions.
command -v cargo-mutants >/dev/null || cargo install --locked --version 27.1.0 cargo-mutants
rm -rf mutants.out
status=0
cargo mutants "${args[@]}" || status=$?
[[ -n ${diff:-} ]] && rm -f "$diff"
if [[ $status == 0 && ! -f mutants.out/missed.txt ]]; then
  # cargo-mutants writes nothing when the changed lines hold no mutant (comments, imports,
  # the excluded checks).
  echo "mutants: no mutant on the changed lines"
  exit 0
fi
# cargo-mutants exits 2 when a mutant was missed and 3 on timeouts (a mutant that hangs the
# tests is noticed, not missed); anything else is a failure of the run itself (e.g. the
# unmutated tree failing its tests).
case $status in 0 | 2 | 3) ;; *) exit "$status" ;; esac
for kind in caught missed timeout unviable; do
  printf 'mutants: %-8s %s\n' "$kind" "$(wc -l <"mutants.out/$kind.txt" 2>/dev/null || echo 0)"
done
# Missed mutants not listed as equivalent, matched without their line:column.
python3 - <<'EOF'
import collections, re
def strip(s):
    return re.sub(r":\d+:\d+:", ":", s.split("#")[0].strip())
known = collections.Counter(strip(l) for l in open("core/mutants-equivalent.txt") if strip(l))
unexplained = []
for m in open("mutants.out/missed.txt"):
    k = strip(m)
    if known[k] > 0:
        known[k] -= 1
    else:
        unexplained.append(m.strip())
open("mutants.out/unexplained.txt", "w").write("".join(u + "\n" for u in unexplained))
print(f"mutants: {len(unexplained)} missed and not listed as equivalent")
for u in unexplained:
    print(f"  {u}")
EOF
if $gate && [[ -s mutants.out/unexplained.txt ]]; then
  echo "mutants: a change to the core left a rule no test checks (above): add a test, or list the"
  echo "mutant in core/mutants-equivalent.txt with the reason in core/mutants.md"
  exit 1
fi

seeds=${MUTANTS_CHAOS_SEEDS:-0}
if ((seeds > 0)) && [[ -s mutants.out/missed.txt ]]; then
  work=$(mktemp -d)
  git worktree add -q --detach "$work/tree" HEAD
  trap 'git worktree remove --force "$work/tree"' EXIT
  : >mutants.out/chaos.txt
  python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
outcomes = json.load(open("mutants.out/outcomes.json"))["outcomes"]
n = 0
for o in outcomes:
    if o.get("summary") != "MissedMutant":
        continue
    m = o["scenario"]["Mutant"]
    diff = open(f'mutants.out/{o["diff_path"]}').read().splitlines(keepends=True)
    # cargo-mutants names the mutation on the +++ line: git apply wants the file there.
    diff[1] = "+++ " + m["file"] + "\n"
    open(f"{work}/{n}.diff", "w").write("".join(diff))
    open(f"{work}/{n}.name", "w").write(m["name"])
    n += 1
EOF
  for d in "$work"/*.diff; do
    name=$(cat "${d%.diff}.name")
    git -C "$work/tree" checkout -q -- .
    git -C "$work/tree" apply -p0 "$d"
    if (cd "$work/tree" && RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$CARGO_TARGET_DIR/sim" \
      SIM_SEEDS="$seeds" SIM_SEED_BASE=1 cargo test -q -p raft-kv-sim --test chaos -- \
      --test-threads 1 chaos_histories >/dev/null 2>&1); then
      echo "missed by $seeds seeds too: $name" | tee -a mutants.out/chaos.txt
    else
      echo "caught by the chaos seeds: $name" | tee -a mutants.out/chaos.txt
    fi
  done
fi
exit 0
