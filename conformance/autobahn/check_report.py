#!/usr/bin/env python
"""Check an Autobahn|Testsuite fuzzingclient report (index.json) for Chatty.

Every case's `behavior` and `behaviorClose` must be OK, NON-STRICT or INFORMATIONAL. With
--spec (and autobahntestsuite importable, as in the venv scripts/autobahn.sh makes), every
case the spec selects must also be in the report: a case that never ran counts as failed.

Prints the counts per behavior, one line per failed case, and the summary line
`autobahn: N passed, M failed`. Exits 1 on any failure or when no case ran, 2 on a missing or
unreadable report.

Runs on Python 2.7 and 3.
"""
from __future__ import print_function

import argparse
import json
import os
import sys

ACCEPTED = ("OK", "NON-STRICT", "INFORMATIONAL")


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def expected_cases(spec_path):
    """The case ids the spec selects, resolved the way wstest resolves them."""
    from autobahntestsuite.caseset import CaseSet
    from autobahntestsuite.case import (Cases, CaseBasename, CaseCategories, CaseSetname,
                                        CaseSubCategories)

    with open(spec_path) as f:
        spec = json.load(f)
    case_set = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
    return case_set.parseSpecCases(spec)


def one_line(text, limit=160):
    text = " ".join(str(text or "").replace("<br>", " ").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report_dir", help="the spec's outdir (holds index.json)")
    ap.add_argument("--spec", help="the fuzzingclient spec the run used (checks every case ran)")
    ap.add_argument("--agent", default=None, help="agent name in the report (default: the only one)")
    args = ap.parse_args()

    index_path = os.path.join(args.report_dir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (IOError, OSError, ValueError) as e:
        print("autobahn: no readable report at %s (%s)" % (index_path, e), file=sys.stderr)
        print("autobahn: 0 passed, 0 failed")
        return 2

    if args.agent:
        results = index.get(args.agent, {})
    elif len(index) == 1:
        results = list(index.values())[0]
    else:
        print("autobahn: report has agents %s; pass --agent" % sorted(index), file=sys.stderr)
        return 2

    expected = None
    if args.spec:
        try:
            expected = expected_cases(args.spec)
        except ImportError as e:
            print("autobahn: cannot resolve the spec's cases (%s); not checking that all ran" % e,
                  file=sys.stderr)

    counts = {}
    passed, failures = 0, []
    for case_id in sorted(results, key=case_key):
        r = results[case_id]
        b, bc = r.get("behavior"), r.get("behaviorClose")
        counts[(b, bc)] = counts.get((b, bc), 0) + 1
        if b in ACCEPTED and bc in ACCEPTED:
            passed += 1
            continue
        detail = {}
        report_file = os.path.join(args.report_dir, r.get("reportfile", ""))
        try:
            with open(report_file) as f:
                detail = json.load(f)
        except (IOError, OSError, ValueError):
            pass
        failures.append(
            "  %-8s %s / %s: %s | expected: %s | got: %s; close: %s (server sent close code %s)"
            % (case_id, b, bc, one_line(detail.get("description")),
               one_line(detail.get("expectation")), one_line(detail.get("result")),
               one_line(detail.get("resultClose")), r.get("remoteCloseCode")))

    missing = sorted(set(expected or []) - set(results), key=case_key)
    for case_id in missing:
        failures.append("  %-8s did not run (no result in the report)" % case_id)

    print("autobahn: %d cases in %s" % (len(results), index_path))
    print("  %-14s %-14s %5s" % ("behavior", "behaviorClose", "cases"))
    for (b, bc), n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        print("  %-14s %-14s %5d" % (b, bc, n))
    if failures:
        print("failed cases (details: %s/<agent>_case_<id>.html):" % args.report_dir)
        for line in failures:
            print(line)
    failed = len(failures)
    print("autobahn: %d passed, %d failed" % (passed, failed))
    if passed + failed == 0:
        print("autobahn: no case ran", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
