#!/usr/bin/env python3
"""The longest non-test functions of the Rust sources under the given folders.

    scripts/function-lengths.py src registry/src            # the 15 longest
    scripts/function-lengths.py --max 100 src registry/src  # exit 1 if one is longer (CI)

Counts the lines from `fn` to its closing brace (braces in strings, chars and line
comments ignored); a file's `#[cfg(test)] mod tests` and everything after it is skipped.
A reading aid, not a parser: good enough for code formatted by rustfmt.
"""
import argparse
import os
import re
import sys

FN = re.compile(r"\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def lengths(root):
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            lines = open(path, encoding="utf-8").read().split("\n")
            end = len(lines)
            for i in range(len(lines) - 1):
                if re.match(r"\s*#\[cfg\(test\)\]", lines[i]) and re.match(r"\s*mod tests", lines[i + 1]):
                    end = i
                    break
            for i in range(end):
                m = FN.match(lines[i])
                if not m:
                    continue
                depth, started = 0, False
                for j in range(i, end):
                    s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                    s = re.sub(r"'(\\.|[^'\\])'", "''", s).split("//")[0]
                    if not started and ";" in s and "{" not in s:
                        break  # a declaration without a body
                    for c in s:
                        if c == "{":
                            depth, started = depth + 1, True
                        elif c == "}":
                            depth -= 1
                    if started and depth == 0:
                        yield j - i + 1, path, i + 1, m.group(6)
                        break


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max", type=int, help="fail if a function is longer than this")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("roots", nargs="+")
    a = p.parse_args()
    found = sorted(x for r in a.roots for x in lengths(r))
    for n, path, line, name in found[-a.top:]:
        print(f"{n:4} {path}:{line} {name}")
    over = [f for f in found if a.max is not None and f[0] > a.max]
    if over:
        print(f"{len(over)} function(s) longer than {a.max} lines", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
