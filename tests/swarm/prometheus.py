#!/usr/bin/env python3
"""Asks a running Prometheus what kelp's Swarm tests need to know, through its HTTP
API only (the API an operator's Grafana uses). Each check prints lines
`PASS <what>` or `FAIL <what>` for the calling test to count; the exit status says
whether the condition a caller waits for holds.

  targets URL [JOB]    every active target up (and at least one)
  rules URL [N]        every rule group loaded (N rules), no rule in error
  dashboard URL FILE   every PromQL expression of a Grafana dashboard evaluated
"""
import json
import re
import sys
import time
import urllib.parse
import urllib.request


def api(base, path, **params):
    url = f"{base}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # a bad query answers 400 with a JSON error
        body = json.load(e)
    return body


def targets(base, job=None):
    active = api(base, "targets", state="active")["data"]["activeTargets"]
    if job:
        active = [t for t in active if t["labels"].get("job") == job]
    for t in active:
        print(f"target {t['labels'].get('job')} {t['scrapeUrl']}: {t['health']}"
              + (f" ({t['lastError']})" if t.get("lastError") else ""))
    return bool(active) and all(t["health"] == "up" for t in active)


def rules(base, expected=None):
    groups = api(base, "rules")["data"]["groups"]
    good = True
    n = 0
    for g in groups:
        for r in g["rules"]:
            n += 1
            ok = r.get("health") == "ok"
            good &= ok
            print(f"{'PASS' if ok else 'FAIL'} rule {g['name']}/{r.get('name')}: "
                  f"health {r.get('health')}, state {r.get('state', '-')}"
                  + (f" ({r['lastError']})" if r.get("lastError") else ""))
    if n == 0 or (expected is not None and n != expected):
        print(f"FAIL {n} rules loaded, {expected} expected")
        return False
    return good


# Grafana's template variables, as a dashboard's viewer would leave them: every
# value of a variable, the rate interval Grafana would pick for a short range.
GRAFANA_VARS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}


def substitute(expr):
    def var(m):
        name = m.group(1) or m.group(2)
        return GRAFANA_VARS.get(name, ".*")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", var, expr)


def expressions(dashboard):
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    yield p.get("title", "?"), t["expr"]
            yield from walk(p.get("panels", []))
    return list(walk(dashboard.get("panels", [])))


# A name in an expression that is a metric, once label lists and matchers are gone.
METRIC = re.compile(r"\b((?:kelp|juicefs)_[a-zA-Z0-9_:]*)\b")
LABELS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\{[^}]*\}")
# What may have no series yet: a counter (or histogram) appears with its first
# increment; a retired generation's tail only after a takeover.
def may_be_absent(name):
    return name.endswith(("_total", "_bucket", "_sum", "_count")) or name == "kelp_generation_tail_keys"


def dashboard(base, path, wait):
    with open(path) as f:
        exprs = expressions(json.load(f))
    good = bool(exprs)
    # A rate needs two samples in its range: wait for three scrapes of every target.
    deadline = time.monotonic() + wait
    while not api(base, "query", query="min(count_over_time(up[5m])) >= 3")["data"]["result"]:
        if time.monotonic() > deadline:
            print(f"FAIL fewer than three scrapes of every target after {wait:.0f} s")
            return False
        time.sleep(1)
    for title, raw in exprs:
        expr = substitute(raw)
        r = api(base, "query", query=expr)
        result = r.get("data", {}).get("result", []) if r["status"] == "success" else []
        what = f"dashboard '{title}': {expr}"
        if r["status"] != "success":
            print(f"FAIL {what}: {r.get('errorType')}: {r.get('error')}")
            good = False
            continue
        if result:
            sample = ", ".join(f"{s['value'][1]}" for s in result[:3])
            print(f"PASS {what}: {len(result)} series ({sample}{', ...' if len(result) > 3 else ''})")
            continue
        # Empty. Fine only for a counter nothing has incremented yet (no series of
        # it at all); an expression empty over series that exist is broken.
        names = sorted(set(METRIC.findall(LABELS.sub("", expr))))
        present = [n for n in names
                   if api(base, "query", query=f"count({n})")["data"]["result"]]
        if names and not present and all(may_be_absent(n) for n in names):
            print(f"PASS {what}: valid, empty (no series yet: nothing has counted {', '.join(names)} yet)")
        elif present:
            print(f"FAIL {what}: empty although {', '.join(present)} have series")
            good = False
        else:
            print(f"FAIL {what}: empty: no series of {', '.join(names) or 'any metric'}")
            good = False
    return good


def main():
    cmd, base = sys.argv[1], sys.argv[2].rstrip("/")
    if cmd == "targets":
        ok = targets(base, sys.argv[3] if len(sys.argv) > 3 else None)
    elif cmd == "rules":
        ok = rules(base, int(sys.argv[3]) if len(sys.argv) > 3 else None)
    elif cmd == "dashboard":
        ok = dashboard(base, sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 30)
    else:
        sys.exit(f"unknown command {cmd}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
