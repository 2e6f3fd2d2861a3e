#!/usr/bin/env python3
"""Self (exclusive) instructions by function of a callgrind dump, per request.

    cg_self.py FILE N [TOP]

callgrind_annotate 3.19 puts every cost of a later dump (callgrind_control
-d) under main; this reads the file itself: a cost line counts for the
current fn= unless it follows a calls= line (that is a call's inclusive
cost). Names are shortened to the last path segments.
"""
import re
import sys
from collections import defaultdict


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    names, cost = {}, defaultdict(int)
    fn, after_call = None, False
    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.strip())
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                fn = names.get(m.group(1), m.group(1))
            else:
                fn = line[3:].strip()
            after_call = False
        elif line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if after_call:
                after_call = False
                continue
            if len(parts) >= 2 and fn is not None:
                cost[fn] += int(parts[1])
    total = sum(cost.values())
    print(f"total {total / n:,.0f} per request")
    for f, c in sorted(cost.items(), key=lambda kv: -kv[1])[:top]:
        short = re.sub(r"<[^<>]*>", "", f)
        short = re.sub(r"<[^<>]*>", "", short)
        print(f"{c / n:9,.0f} {100 * c / total:5.1f}%  {short[:150]}")


if __name__ == "__main__":
    main()
