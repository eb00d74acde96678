#!/usr/bin/env python3
"""The documents a user reads: README.md and docs/*.md.

- every relative link resolves to a file, and a #fragment to one of its headings (GitHub's anchors);
- the README's first code block holds the two set-up commands, and .ci/run runs the second (the
  test command) exactly;
- every `configs/*.yaml` the documents name exists, and so does every `launch/` or `tools/` script.

usage: tests/docs/docs_test.py REPO_ROOT     (exit 0: all good; 1: the problems, one per line)
"""
import glob
import os
import re
import sys


def anchors(path):
    out = set()
    in_code = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^#+ (.*)", line)
        if m:
            t = m.group(1).strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", t).replace(" ", "-"))
    return out


def main(root):
    problems = []
    docs = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    for f in docs:
        text = open(f, encoding="utf-8").read()
        rel = os.path.relpath(f, root)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            link = m.group(1)
            if re.match(r"[a-z]+:", link):
                continue
            path, _, frag = link.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            if not os.path.exists(target):
                problems.append(f"{rel}: link {link}: {os.path.relpath(target, root)} does not exist")
            elif frag and target.endswith(".md") and frag not in anchors(target):
                problems.append(f"{rel}: link {link}: no heading with anchor #{frag} in {os.path.relpath(target, root)}")
        for m in re.finditer(r"(?<![\w/.])((?:configs|launch|tools)/[\w./-]+\.(?:yaml|sh|py|sbatch))\b", text):
            if not os.path.exists(os.path.join(root, m.group(1))):
                problems.append(f"{rel}: names {m.group(1)}, which does not exist")

    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    lines = [l.split("#")[0].strip() for l in block.group(1).splitlines()] if block else []
    if len(lines) < 2 or not lines[0].startswith("launch/setup.sh") or "launch/test.sh" not in lines[1]:
        problems.append("README.md: the first code block must hold the main job and the test command")
    else:
        ci = open(os.path.join(root, ".ci", "run"), encoding="utf-8").read()
        if lines[1] not in ci:
            problems.append(f"README.md: .ci/run does not run the README's test command `{lines[1]}`")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
