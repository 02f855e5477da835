#!/usr/bin/env python3
"""Writes corpus.tsv, the corpus of the semantic-search demo: the first sentence of the
docstring of every public function, class and method of a set of Python standard
library modules, one per line as `name<TAB>sentence`, deduplicated and sorted.

    python3 examples/search/make_corpus.py

Needs only Python 3 itself; the file is committed, so the demo does not run this.
"""
import importlib
import inspect
import os
import re

MODULES = """
abc argparse array ast asyncio base64 bisect bz2 calendar cmath codecs collections
colorsys concurrent.futures configparser contextlib copy csv dataclasses datetime
decimal difflib dis email enum filecmp fileinput fnmatch fractions ftplib functools
gc getopt getpass gettext glob gzip hashlib heapq hmac html html.parser http.client
http.server imaplib importlib inspect io ipaddress itertools json keyword linecache
locale logging lzma mailbox math mimetypes mmap multiprocessing netrc numbers operator
os os.path pathlib pickle pkgutil platform plistlib poplib pprint profile pstats queue
quopri random re reprlib sched secrets select selectors shelve shlex shutil signal
smtplib socket socketserver sqlite3 ssl stat statistics string struct subprocess
sys tarfile tempfile textwrap threading time timeit tokenize traceback turtle types
typing unicodedata unittest urllib.parse urllib.request uuid warnings wave weakref
xml.dom.minidom xml.etree.ElementTree zipfile zlib
""".split()


def first_sentence(doc):
    text = " ".join(doc.strip().split("\n\n")[0].split())
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    s = m.group(1) if m else text
    return s if 24 <= len(s) <= 160 and not s.startswith(("(", "[", "<")) and "(" not in s[:3] else None


def main():
    seen, rows = set(), []

    def add(name, obj):
        doc = inspect.getdoc(obj)
        s = doc and first_sentence(doc)
        if s and s.lower() not in seen:
            seen.add(s.lower())
            rows.append((name, s))

    for mod_name in MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except Exception:
            continue
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or (getattr(obj, "__module__", None) or mod_name).split(".")[0] != mod_name.split(".")[0]:
                continue
            if inspect.isfunction(obj) or inspect.isbuiltin(obj):
                add(f"{mod_name}.{name}", obj)
            elif inspect.isclass(obj):
                add(f"{mod_name}.{name}", obj)
                for meth_name, meth in sorted(vars(obj).items()):
                    if not meth_name.startswith("_") and callable(meth):
                        add(f"{mod_name}.{name}.{meth_name}", meth)
    rows.sort()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.tsv")
    with open(out, "w") as f:
        for name, s in rows:
            f.write(f"{name}\t{s}\n")
    print(f"{len(rows)} sentences -> {out}")


if __name__ == "__main__":
    main()
