#!/usr/bin/env python3
"""Extract the runnable blocks of the README's getting-started walkthrough.

The walkthrough is the section "## Getting started: ..." of README.md. Its
runnable blocks are the fenced blocks whose info string is `sh tour=<name>`;
every other block (plain ``` output examples, ```sql excerpts) is for reading
only. Each runnable block is written, as it stands, to
<out>/<nn>_<name>.sh, and the names are printed in order, one a line.

The one change made: --tour-dir replaces the walkthrough's folder
(/tmp/kafka_sync_tour), so that the test never touches a tour a reader left
running.

  extract_blocks.py README.md OUT_DIR [--tour-dir DIR]
"""

import argparse
import re
import sys
from pathlib import Path

SECTION = "## Getting started"
TOUR_FOLDER = "/tmp/kafka_sync_tour"
FENCE = re.compile(r"^(`{3,})(.*)$")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class WalkthroughError(RuntimeError):
    pass


def section_lines(readme):
    lines = readme.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(SECTION)]
    if len(starts) != 1:
        raise WalkthroughError(f"README.md must have one section starting {SECTION!r}, has {len(starts)}")
    start = starts[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end], start + 1


def blocks(readme):
    """[(name, text, line)] of the runnable blocks, in order."""
    lines, first_line = section_lines(readme)
    found, seen = [], set()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2).split()
        body_start = i + 1
        i = body_start
        while i < len(lines) and lines[i].rstrip() != fence:
            i += 1
        if i == len(lines):
            raise WalkthroughError(f"README.md:{first_line + body_start - 1}: unclosed code block")
        body = lines[body_start:i]
        i += 1
        if not info or info[0] not in ("sh", "bash", "shell"):
            continue
        names = [w[len("tour="):] for w in info[1:] if w.startswith("tour=")]
        where = f"README.md:{first_line + body_start - 1}"
        if len(names) != 1 or not NAME.match(names[0]):
            raise WalkthroughError(f"{where}: a shell block of the walkthrough needs one tour=<name> "
                                   f"(a-z, 0-9, _) after sh: it is run by test/walkthrough")
        if names[0] in seen:
            raise WalkthroughError(f"{where}: tour={names[0]} is used twice")
        seen.add(names[0])
        found.append((names[0], "\n".join(body) + "\n", first_line + body_start - 1))
    if not found:
        raise WalkthroughError("the walkthrough has no ```sh tour=<name> block")
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("readme")
    ap.add_argument("out_dir")
    ap.add_argument("--tour-dir", help=f"run the tour here instead of {TOUR_FOLDER}")
    args = ap.parse_args(argv)
    try:
        found = blocks(Path(args.readme).read_text())
        if args.tour_dir:
            if not any(TOUR_FOLDER in text for _, text, _ in found):
                raise WalkthroughError(f"the walkthrough no longer names its folder {TOUR_FOLDER}: "
                                       f"the test cannot move it (test/walkthrough/extract_blocks.py)")
            found = [(n, t.replace(TOUR_FOLDER, args.tour_dir), l) for n, t, l in found]
    except WalkthroughError as e:
        print(f"extract_blocks: {e}", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for n, (name, text, line) in enumerate(found, 1):
        (out / f"{n:02d}_{name}.sh").write_text(f"# README.md:{line}\n{text}")
        print(f"{n:02d}_{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
