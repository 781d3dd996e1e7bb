#!/usr/bin/env bash
# Checks deploy/ (issue 16): the Prometheus config, alert rules and their unit tests, the
# Grafana dashboard, and the systemd unit. Every metric name the rules and the dashboard use
# must be one of docs/design/metrics.md's (the contract), plus Prometheus's `up`.
#
#   scripts/check-deploy.sh
#
# Installs what it needs if missing (Debian, as root): promtool (package prometheus) and
# PyYAML. Runs every check, then prints "N passed, M failed" and exits 1 if any failed.
# Needs no cargo and no running raft-kv, Prometheus or Grafana.
set -euo pipefail
cd "$(dirname "$0")/.."

prom=deploy/prometheus
dash=deploy/grafana/raft-kv.json
unit=deploy/systemd/raft-kv@.service
envfile=deploy/systemd/example.env
contract=docs/design/metrics.md

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# promtool ships in Debian's prometheus package. On a host with systemd that package also
# enables and starts a Prometheus server on :9090; nothing here uses it (in a container,
# policy-rc.d usually keeps it from starting).
if ! command -v promtool >/dev/null; then
  echo "installing promtool (Debian package prometheus)"
  apt_install prometheus
fi
# A python3 with PyYAML (to read the rules); Debian's python3-yaml is for /usr/bin/python3.
py=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import yaml' 2>/dev/null; then py=$p; break; fi
done
if [ -z "$py" ]; then
  echo "installing python3-yaml"
  apt_install python3 python3-yaml
  py=/usr/bin/python3
fi
promtool --version 2>&1 | head -1

passed=0
failed=0
failures=()
# check NAME COMMAND...: runs one check, records its result, and goes on.
check() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAILED: $name"
  fi
}

check "promtool check config $prom/prometheus.yml" \
  promtool check config "$prom/prometheus.yml"
check "promtool check rules $prom/alerts.yml" \
  promtool check rules "$prom/alerts.yml"

rule_tests() {
  # Counts what the tests assert (promtool itself only says SUCCESS or shows the failures).
  "$py" - "$prom/alerts_test.yml" <<'PY' || return 1
import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))
cases = [c for g in t["tests"] for c in g.get("alert_rule_test", [])]
fire = sum(1 for c in cases if c.get("exp_alerts"))
print(f"   {len(t['tests'])} test groups, {len(cases)} alert evaluations "
      f"({fire} expect alerts, {len(cases) - fire} expect none)")
PY
  promtool test rules "$prom/alerts_test.yml"
}
check "promtool test rules $prom/alerts_test.yml" rule_tests

check "python3 -m json.tool $dash" \
  bash -c '"$0" -m json.tool "$1" >/dev/null && echo "   valid JSON"' "$py" "$dash"

# Metric names, labels and types of every expression against the contract, each alert's
# labels, annotations and tests, and the dashboard's coverage of the contract. Also writes
# the dashboard's expressions (Grafana variables replaced) as recording rules, so that
# promtool parses them below.
contract_check() {
  "$py" - "$contract" "$prom/prometheus.yml" "$prom/alerts.yml" "$prom/alerts_test.yml" \
    "$dash" "$tmp/dashboard-rules.yml" <<'PY'
import json, re, sys, yaml

contract, prom_cfg, rules_path, tests_path, dash_path, out_path = sys.argv[1:7]
errors = []

# The contract: the table's rows `| `name` | type | `label`, ... | meaning |`.
rows = re.findall(r"^\|\s*`(\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", open(contract).read(), re.M)
if len(rows) < 10:
    sys.exit(f"   {contract}: found only {len(rows)} metrics in its table; has its format changed?")
types, labels_of = {}, {}
for name, typ, labels in rows:
    labels = set(re.findall(r"`(\w+)`", labels))
    if typ == "histogram":
        for suffix in ("_bucket", "_sum", "_count"):
            types[name + suffix] = "counter"
            labels_of[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    elif typ in ("counter", "gauge"):
        types[name], labels_of[name] = typ, labels
    else:
        errors.append(f"{contract}: {name} has unknown type {typ!r}")
types["up"], labels_of["up"] = "gauge", set()
# Labels Prometheus attaches to every series of the job: job, instance, and prometheus.yml's.
cfg = yaml.safe_load(open(prom_cfg))
target_labels = {"job", "instance"}
for sc in cfg["scrape_configs"]:
    for st in sc.get("static_configs", []):
        target_labels |= set(st.get("labels", {}))
all_labels = set().union(*labels_of.values()) | target_labels | {"le"}

FUNCS = set("""abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
changes clamp clamp_max clamp_min cos cosh count_over_time days_in_month day_of_month day_of_week
day_of_year deg delta deriv exp floor histogram_count histogram_fraction histogram_quantile
histogram_sum holt_winters hour idelta increase irate label_join label_replace last_over_time ln
log10 log2 max_over_time min_over_time minute month pi predict_linear present_over_time
quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc sqrt
stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile""".split())
KEYWORDS = set("and or unless by without on ignoring group_left group_right offset bool inf nan "
               "start end atan2".split())
used = set()


def grafana_vars(expr):
    expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}",
                  "5m", expr)
    return re.sub(r"\$\{\w+(:\w+)?\}|\$\w+", "x", expr)


def check_expr(where, expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', grafana_vars(expr))
    for m in re.finditer(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", e):
        for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)):
            name = m.group(1)
            ok = labels_of.get(name, all_labels) | target_labels | {"__name__"}
            if label not in ok:
                errors.append(f"{where}: label {label!r} is not one of {name or 'any metric'}'s")
    for fn, name in re.findall(r"\b(rate|irate|increase|resets)\(\s*([a-zA-Z_:][\w:]*)", e):
        if types.get(name, "counter") != "counter":
            errors.append(f"{where}: {fn}() of {name}, a {types[name]} (counters only)")
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        for label in re.findall(r"\w+", clause):
            if label not in all_labels:
                errors.append(f"{where}: grouping label {label!r} is in no contract metric")
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call:
            if word not in FUNCS:
                errors.append(f"{where}: unknown function {word}()")
        elif word.lower() in KEYWORDS:
            pass
        elif word in types:
            used.add((where.split(":")[0], word))
        else:
            errors.append(f"{where}: metric {word!r} is not in {contract}"
                          + (" (a histogram: use _bucket, _sum or _count)"
                             if any(n.startswith(word + "_") for n in types) else ""))


# Alert rules: metric names, severity, annotations naming the instance, tests both ways.
rules = yaml.safe_load(open(rules_path))
alerts = []
for group in rules["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert") or rule.get("record")
        check_expr(f"alerts.yml:{name}", rule["expr"])
        if "alert" not in rule:
            continue
        alerts.append(name)
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            errors.append(f"alerts.yml:{name}: no severity label (critical, warning or info)")
        ann = rule.get("annotations", {})
        for key in ("summary", "description"):
            if not ann.get(key):
                errors.append(f"alerts.yml:{name}: no {key} annotation")
        text = " ".join(ann.values())
        for label in re.findall(r"\$labels\.(\w+)", text):
            if label not in all_labels:
                errors.append(f"alerts.yml:{name}: annotation uses label {label!r}, in no metric")
        if "$labels.instance" not in text and "$labels.job" not in text:
            errors.append(f"alerts.yml:{name}: annotations name neither the instance nor the job")
tests = yaml.safe_load(open(tests_path))
fires, silent = set(), set()
for group in tests["tests"]:
    for case in group.get("alert_rule_test", []):
        (fires if case.get("exp_alerts") else silent).add(case["alertname"])
for name in alerts:
    if name not in fires:
        errors.append(f"alerts_test.yml: no test where {name} fires")
    if name not in silent:
        errors.append(f"alerts_test.yml: no test where {name} stays silent")

# Dashboard: every "expr" anywhere (targets, annotations), and the variables' queries.
d = json.load(open(dash_path))
exprs = []


def walk(node, path):
    if isinstance(node, dict):
        title = node.get("title") or node.get("name") or path
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                exprs.append((f"dashboard:{title}", v))
            elif k == "legendFormat" and isinstance(v, str):
                for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", v):
                    if label not in all_labels:
                        errors.append(f"dashboard:{title}: legend uses label {label!r}, in no metric")
            else:
                walk(v, title)
    elif isinstance(node, list):
        for v in node:
            walk(v, path)


walk(d.get("panels", []), "panels")
walk(d.get("annotations", {}), "annotations")
if d.get("schemaVersion", 0) < 36:
    errors.append(f"dashboard: schemaVersion {d.get('schemaVersion')} is older than Grafana 9's")
for var in d.get("templating", {}).get("list", []):
    if var.get("type") != "query":
        continue
    q = var.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q)
    if not m:
        errors.append(f"dashboard: variable {var.get('name')}: query {q!r} is not label_values(EXPR, LABEL)")
        continue
    if m.group(2) not in all_labels:
        errors.append(f"dashboard: variable {var.get('name')}: label {m.group(2)!r} is in no metric")
    exprs.append((f"dashboard:variable {var.get('name')}", m.group(1)))
for where, expr in exprs:
    check_expr(where, expr)
panel_types = {p.get("type") for p in d.get("panels", [])}
for p in d.get("panels", []):
    if p.get("type") != "row" and not p.get("targets"):
        errors.append(f"dashboard: panel {p.get('title')!r} has no query")

# The dashboard shows every metric of the contract.
histograms = {n for n, t, _ in rows if t == "histogram"}


def base(name):
    b = re.sub(r"_(bucket|sum|count)$", "", name)
    return b if b in histograms else name


shown = {base(n) for w, n in used if w == "dashboard"}
missing = sorted(n for n, _, _ in rows if n not in shown)
if missing:
    errors.append("dashboard: shows no panel of " + ", ".join(missing))

# The dashboard's expressions as recording rules, for `promtool check rules` to parse.
rules_out = [{"record": f"dashboard:expr_{i}", "expr": grafana_vars(e)}
             for i, (_, e) in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules_out}]}, open(out_path, "w"))

for e in errors:
    print("   " + e)
if errors:
    sys.exit(1)
names = {n for _, n in used}
print(f"   {len(exprs)} dashboard and {len(alerts)} alert expressions use {len(names)} metric "
      f"names, all in the contract ({len(rows)} metrics) or `up`; the dashboard shows all "
      f"{len(rows)}; every alert has a severity, a summary and a description naming the "
      f"node, and tests where it fires and where it does not")
PY
}
check "metric names, labels and types against $contract" contract_check

check "promtool check rules: the dashboard's expressions parse" \
  bash -c 'test -s "$0" && promtool check rules "$0"' "$tmp/dashboard-rules.yml"

env_check() {
  # The example's flags: each one a flag that README.md's "Flags" or the metrics contract
  # documents; --id and --data-dir are the unit's.
  local args
  args=$(set -a && . "$1" && printf '%s' "${RAFT_KV_ARGS:?RAFT_KV_ARGS is not set}") || return 1
  local bad=0 flag
  for flag in $(grep -o -- '--[a-z-]*' <<<"$args"); do
    case $flag in
      --id | --data-dir) echo "   $1: $flag is set by the unit"; bad=1 ;;
      *) grep -q -- "$flag" README.md "$contract" || { echo "   $1: $flag is not documented"; bad=1; } ;;
    esac
  done
  [ "$bad" = 0 ] && echo "   RAFT_KV_ARGS: $args"
}
check "$envfile" env_check "$envfile"

# systemd-analyze verify: this container runs no systemd (PID 1 is not systemd), so the unit
# is verified offline in a scratch root (--root, systemd >= 250) that holds the unit, the
# system's own unit files (the targets it orders against) and a stub /usr/local/bin/raft-kv
# (verify refuses an ExecStart binary that does not exist, and nothing is built here). verify
# exits 0 on unknown keys and bad values, only printing them, so any output fails the check.
unit_check() {
  local ver root out
  ver=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
  if [ "${ver:-0}" -lt 250 ] 2>/dev/null; then
    echo "   SKIPPED: systemd $ver has no 'systemd-analyze verify --root'"
    return 0
  fi
  root=$tmp/root
  mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/" 2>/dev/null || true
  cp "$unit" "$root/etc/systemd/system/"
  printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/raft-kv"
  chmod 755 "$root/usr/local/bin/raft-kv"
  if ! out=$(systemd-analyze verify --root="$root" raft-kv@1.service 2>&1) || [ -n "$out" ]; then
    printf '%s\n' "$out"
    return 1
  fi
  echo "   raft-kv@1.service: no errors or warnings"
  # Informational: systemd's own rating of the sandboxing (lower is better).
  systemd-analyze security --offline=true --root="$root" raft-kv@1.service 2>/dev/null |
    grep -i 'overall exposure' | sed 's/^/   /' || true
}
if command -v systemd-analyze >/dev/null; then
  check "systemd-analyze verify $unit" unit_check
else
  echo "== systemd-analyze verify $unit"
  echo "   SKIPPED: systemd-analyze is not installed (Debian package systemd)"
fi

echo
echo "$passed passed, $failed failed"
if [ "$failed" != 0 ]; then
  printf 'failed: %s\n' "${failures[@]}"
  exit 1
fi
