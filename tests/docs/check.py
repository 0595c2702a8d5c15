"""`make docs`: the docs say what is true and point where things are.

- Each code block of docs/guide.md runs: a ```c block is compiled (C11, -Wall -Wextra -Werror
  -pedantic) against include/btb.h and the in-tree libbtb.so and run; a ```python block runs with
  the installed `btb` (this interpreter). `c no-run` / `python no-run` blocks (a child's side of an
  exec host, which needs its broker) are compiled only.
- Every relative link of README.md and docs/*.md names a file that exists and, with #anchor, a
  heading of it.
- Every relative href/src of the generated HTML in build/docs/ names a file that exists.

    python tests/docs/check.py
"""

from __future__ import annotations

import html.parser
import py_compile
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"
failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"docs-check: FAILED: {message}", file=sys.stderr)


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(info string, line, text) of each fenced block."""
    blocks = []
    for match in re.finditer(r"^```([^\n]*)\n(.*?)^```$", path.read_text(), re.S | re.M):
        line = path.read_text()[: match.start()].count("\n") + 1
        blocks.append((match.group(1).strip(), line, match.group(2)))
    return blocks


def check_snippets(path: Path, work: Path) -> None:
    for n, (info, line, text) in enumerate(code_blocks(path)):
        where = f"{path.relative_to(ROOT)}:{line}"
        words = info.split()
        if not words or words[0] not in ("c", "python"):
            continue
        run = "no-run" not in words[1:]
        if words[0] == "c":
            source = work / f"snippet{n}.c"
            source.write_text(text)
            cc = ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{ROOT / 'include'}"]
            if run:
                # The in-tree library under its soname, as examples-c/Makefile links it.
                lib = work / "lib"
                lib.mkdir(exist_ok=True)
                for name in ("libbtb.so", "libbtb.so.0"):
                    if not (lib / name).exists():
                        (lib / name).symlink_to(RELEASE / "libbtb.so")
                cc += [str(source), "-o", str(work / f"snippet{n}"), f"-L{lib}", f"-Wl,-rpath,{lib}",
                       "-lbtb", "-pthread"]
            else:
                cc += ["-c", str(source), "-o", str(work / f"snippet{n}.o")]
            built = subprocess.run(cc, capture_output=True, text=True, check=False)
            if built.returncode != 0:
                fail(f"{where}: the C block does not compile:\n{built.stderr}")
                continue
            command = [str(work / f"snippet{n}")]
        else:
            source = work / f"snippet{n}.py"
            source.write_text(text)
            try:
                py_compile.compile(str(source), doraise=True)
            except py_compile.PyCompileError as error:
                fail(f"{where}: the Python block does not compile: {error}")
                continue
            command = [sys.executable, str(source)]
        if not run:
            print(f"docs-check: {where}: {words[0]} block compiles (not run: {info})")
            continue
        ran = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=work)
        if ran.returncode != 0:
            fail(f"{where}: the {words[0]} block exits {ran.returncode}:\n{ran.stdout}{ran.stderr}")
        elif "Traceback" in ran.stderr or "failed" in ran.stderr:
            fail(f"{where}: the {words[0]} block exits 0, but a task failed:\n{ran.stderr}")
        else:
            output = " | ".join(ran.stdout.splitlines())
            print(f"docs-check: {where}: {words[0]} block ran: {output}")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


def check_markdown_links(path: Path) -> int:
    text = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.S | re.M)
    count = 0
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        count += 1
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            fail(f"{path.relative_to(ROOT)}: link to {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            fail(f"{path.relative_to(ROOT)}: link to {target}: no heading #{anchor} in {dest.name}")
    return count


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def check_html_links(tree: Path) -> int:
    count = 0
    for page in tree.rglob("*.html"):
        parser = Links()
        parser.feed(page.read_text(errors="replace"))
        for target in parser.links:
            if re.match(r"[a-z]+:|//|#|\?", target):
                continue
            count += 1
            file_part = target.split("#")[0].split("?")[0]
            if not (page.parent / file_part).exists():
                fail(f"{page.relative_to(ROOT)}: link to {target}: no such file")
    return count


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        check_snippets(ROOT / "docs" / "guide.md", Path(work))
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    links = sum(check_markdown_links(d) for d in documents)
    print(f"docs-check: {links} relative links in {len(documents)} Markdown files")
    for tree in ("python", "c"):
        generated = ROOT / "build" / "docs" / tree
        if generated.is_dir():
            print(f"docs-check: {check_html_links(generated)} relative links in build/docs/{tree}")
    if failures:
        print(f"docs-check: {len(failures)} failure(s)", file=sys.stderr)
        return 1
    print("docs-check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
