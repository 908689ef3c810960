"""Resolve a list of package names to the exact pins of the project's lock files.

Images built on a vendor base (NVIDIA's merlin-tensorflow) cannot install a whole lock: the base brings its
own CUDA builds of TensorFlow, NVTabular and numpy. They add only a few packages, named in a list file, and
take each version from the locks so that the image and the locked environments never disagree.

List file syntax, one entry a line (``#`` starts a comment):
    ``name``           required: pinned from the first lock that names it, an error if none does
    ``name?``          optional: pinned if a lock names it, skipped otherwise (a lock may gain it later)
    ``name==version``  pinned here, for a package whose locked pin cannot install on the base (say why)

Usage: ``python pins.py LIST LOCK [LOCK ...] > requirements.txt``; exits 1 naming every unresolved package.
Standard library only, Python >= 3.8 (it runs in ``python:3.11-slim`` and inside vendor images).
"""

import re
import sys


def normalize(name):
    """PEP 503 name normalization: ``Foo_Bar.baz`` and ``foo-bar-baz`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path):
    """``{normalized name: 'name==version'}`` of a pip-freeze style lock (extras and markers ignored)."""
    pins = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
            if match:
                pins[normalize(match.group(1))] = "%s==%s" % (match.group(1), match.group(3))
    return pins


def read_list(path):
    """``[(name, optional, explicit pin or None)]`` of a list file."""
    entries = []
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "==" in line:
                name, _, version = line.partition("==")
                entries.append((name.strip(), False, "%s==%s" % (name.strip(), version.strip())))
            elif re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*\??$", line):
                entries.append((line.rstrip("?"), line.endswith("?"), None))
            else:
                raise ValueError(
                    "%s:%d: %r is neither `name`, `name?` nor `name==version`" % (path, number, line)
                )
    return entries


def resolve(list_path, lock_paths):
    """The pinned requirement lines for ``list_path``, and the names no lock could pin."""
    locks = [(path, read_lock(path)) for path in lock_paths]
    lines, missing = [], []
    for name, optional, explicit in read_list(list_path):
        if explicit:
            lines.append(explicit)
            continue
        pin = next((pins[normalize(name)] for _, pins in locks if normalize(name) in pins), None)
        if pin:
            lines.append(pin)
        elif not optional:
            missing.append(name)
    return lines, missing


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    lines, missing = resolve(argv[1], argv[2:])
    if missing:
        sys.stderr.write(
            "pins.py: no lock among %s pins %s; add it to a lock (or pin it in %s with a reason)\n"
            % (", ".join(argv[2:]), ", ".join(missing), argv[1])
        )
        return 1
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
