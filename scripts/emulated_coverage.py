#!/usr/bin/env python3
"""Summarizes an interpreter-build run per kernel: cases run and passed.

Inputs: the JSON of `harness verify --emulate --json FILE` and, optionally, the output of
`cargo test --workspace --features emulate` (for the per-test-binary counts of the GPU tests).
Writes Markdown tables to stdout.

    python3 scripts/emulated_coverage.py verify.json [cargo-test.log] > REPORT-part.md
"""
import json
import re
import sys
from collections import OrderedDict


def verify_table(path):
    doc = json.load(open(path))
    per = OrderedDict()
    for row in doc["rows"]:
        # A row is a check report (kernel, case, passed, ...) or a suite error (kernel absent).
        suite = row.get("suite", "?")
        key = (suite, row.get("kernel") or "(suite error)")
        ran, ok = per.get(key, (0, 0))
        per[key] = (ran + 1, ok + (1 if row.get("passed") else 0))
    out = [
        f"`harness verify --emulate` at commit `{doc.get('commit', '?')}` on "
        f"\"{doc['device']['name']}\" ({doc.get('date_utc', '?')}):",
        "",
        "| suite | kernel | cases | passed |",
        "|---|---|---:|---:|",
    ]
    total_ran = total_ok = 0
    for (suite, kernel), (ran, ok) in per.items():
        out.append(f"| {suite} | {kernel} | {ran} | {ok} |")
        total_ran += ran
        total_ok += ok
    out.append(f"| **all** | | **{total_ran}** | **{total_ok}** |")
    return "\n".join(out)


def test_table(path):
    text = open(path, errors="replace").read()
    out = ["", "`cargo test --workspace --features emulate`, the GPU test binaries:", "",
           "| test binary | passed | failed | ignored |", "|---|---:|---:|---:|"]
    binary = None
    crate = "?"
    for line in text.splitlines():
        m = re.search(r"Running (unittests )?(\S+) \(target/[^/]+/deps/(\w+?)-", line)
        if m:
            if m.group(1):
                # The model crate's binary `dsv3` runs its unit tests after the library's.
                crate = m.group(3).replace("_", "-").replace("dsv3", "model")
            binary = f"{crate} {m.group(2)}"
            continue
        m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
        gpu_test = re.search(r"tests/(gpu|cuda|ep\.rs|mtp_cost|emulate)", binary or "")
        if m and gpu_test:
            out.append(f"| {binary} | {m.group(1)} | {m.group(2)} | {m.group(3)} |")
            binary = None
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(verify_table(sys.argv[1]))
    if len(sys.argv) > 2:
        print(test_table(sys.argv[2]))


if __name__ == "__main__":
    main()
