"""The documentation is true of the code: its commands parse, its config keys exist, the files it
names are there, every module is mapped, the README's python runs and its figures come from docs/.

The pages read are ``README.md`` and ``docs/*.md``; docs/contributing.md lists the rules in words.
"""

import argparse
import ast
import contextlib
import dataclasses
import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
COMMENT = re.compile(r"<!--.*?-->", re.S)
URL = re.compile(r"\b(?:https?|ftp)://\S+")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fences(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(lang.strip().lower(), body) for lang, body in FENCE.findall(text)]


def prose(text: str) -> str:
    """The text outside fenced code blocks and HTML comments (inline code kept)."""
    return COMMENT.sub(" ", FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text))


def inline_spans(text: str) -> list[str]:
    return INLINE.findall(prose(text))


def shell_segments(body: str) -> list[list[str]]:
    """The simple commands of a shell code block, as token lists: continuation lines joined,
    comments dropped, split at ``&&``, ``||``, ``;`` and ``|``."""
    segments = []
    for line in body.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for tok in tokens + ["&&"]:
            if tok in ("&&", "||", ";", "|"):
                if current:
                    segments.append(current)
                current = []
            else:
                current.append(tok)
    return segments


def transfusion_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after ``transfusion`` (or ``-m transfusion.cli`` / ``-m transfusion``), else None."""
    if tokens[0] == "transfusion":
        return tokens[1:]
    for i, tok in enumerate(tokens[:-1]):
        if tok == "-m" and tokens[i + 1] in ("transfusion", "transfusion.cli"):
            return tokens[i + 2:]
    return None


def shell_blocks(path: Path) -> list[str]:
    return [body for lang, body in fences(path.read_text()) if lang in ("", "bash", "sh", "shell", "console")]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every ``transfusion ...`` command line in a shell block of the README and docs."""
    found = []
    for page in PAGES:
        for body in shell_blocks(page):
            for tokens in shell_segments(body):
                argv = transfusion_argv(tokens)
                if argv is not None:
                    found.append((rel(page), argv))
    return found


def inline_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every inline ``transfusion SUBCOMMAND ...`` span in the prose."""
    found = []
    for page in PAGES:
        for span in inline_spans(page.read_text()):
            if span.startswith("transfusion "):
                found.append((rel(page), shlex.split(span)[1:]))
    return found


# ---------------------------------------------------------------- (a) commands and flags
class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser, parse):
        self.parser, self.parse = parser, parse


@pytest.fixture
def parser_of(monkeypatch):
    """argv -> (the argparse parser the CLI builds for it, the real ``parse_args`` or
    ``parse_intermixed_args``, whichever the command calls). The command's own function runs up
    to that call, which is stopped there."""
    from transfusion import cli

    for name in ("parse_args", "parse_intermixed_args"):
        def capture(self, args=None, namespace=None, real=getattr(argparse.ArgumentParser, name)):
            raise _Captured(self, real)

        monkeypatch.setattr(argparse.ArgumentParser, name, capture)
    cache: dict = {}

    def get(argv: list[str]):
        assert argv, "a bare `transfusion` with no subcommand"
        assert argv[0] in cli.COMMANDS, f"`transfusion {argv[0]}` is not a subcommand ({', '.join(cli.COMMANDS)})"
        key = tuple(argv[:2]) if argv[0] == "data" else (argv[0],)
        if key not in cache:
            try:
                cli.COMMANDS[argv[0]](list(argv[1:]))
            except _Captured as done:
                cache[key] = done.parser, done.parse
            except SystemExit as err:
                raise AssertionError(f"`transfusion {' '.join(argv)}`: {err}") from None
            else:
                raise AssertionError(f"`transfusion {argv[0]}` built no argument parser")
        return cache[key]

    return get


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    known = option_strings(parser)
    return [tok for tok in argv if tok.startswith("--") and tok != "--" and tok.split("=", 1)[0] not in known]


def test_every_documented_command_parses_with_the_real_cli(parser_of, capsys):
    """Each command line of a shell block runs through its subcommand's own parser (choices and
    types included), and each of its --flags is one that parser defines exactly (no abbreviation)."""
    commands = documented_commands()
    assert len(commands) > 20 and any(page == "README.md" for page, _ in commands)
    subcommands = set()
    for page, argv in commands:
        parser, parse = parser_of(argv)
        subcommands.add(argv[0])
        bad = unknown_flags(parser, argv)
        assert not bad, f"{page}: `transfusion {shlex.join(argv)}`: {bad} not among {sorted(option_strings(parser))}"
        rest = argv[2:] if argv[0] == "data" else argv[1:]
        try:
            parse(parser, rest)
        except SystemExit:
            pytest.fail(f"{page}: `transfusion {shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
    assert {"train", "generate", "caption", "eval", "serve"} <= subcommands


def test_every_inline_command_names_a_subcommand_and_its_flags(parser_of):
    """Inline spans such as `transfusion eval --suite edit` name a real subcommand and its flags
    (they may leave out required arguments, so they are not parsed whole)."""
    spans = inline_commands()
    assert spans
    for page, argv in spans:
        parser, _ = parser_of(argv)
        bad = unknown_flags(parser, argv)
        assert not bad, f"{page}: `transfusion {shlex.join(argv)}`: {bad} not among {sorted(option_strings(parser))}"


# ---------------------------------------------------------------- (a) config keys
FILE_SUFFIXES = {"py", "md", "yaml", "yml", "json", "jsonl", "png", "txt", "safetensors", "html", "tar", "parquet",
                 "pt", "csv", "gz"}


def config_fields() -> dict[str, set[str]]:
    from transfusion.config import Config

    cfg = Config()
    return {f.name: {g.name for g in dataclasses.fields(getattr(cfg, f.name))} for f in dataclasses.fields(cfg)}


def config_keys_named(page: Path, sections: set[str]) -> list[str]:
    """``section.key`` names in the page: tokens of its shell blocks and of its inline code."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, sorted(sections)))})\.([A-Za-z_]\w*)(=.*)?$")
    tokens = [tok for body in shell_blocks(page) for seg in shell_segments(body) for tok in seg]
    tokens += [tok for span in inline_spans(page.read_text()) for tok in span.split()]
    named = []
    for tok in tokens:
        m = pattern.match(tok)
        if m and not (m.group(3) is None and m.group(2) in FILE_SUFFIXES):
            named.append(f"{m.group(1)}.{m.group(2)}")
    return named


def test_every_config_key_the_docs_name_is_a_field_of_the_config():
    """... and a key of before the image section's split (``config.RENAMED``, which still loads)
    is named only where the configuration page says so."""
    from transfusion.config import RENAMED

    fields = config_fields()
    old_names = {f"{section}.{key}" for section, key in RENAMED}
    named = {}
    for page in PAGES:
        for key in config_keys_named(page, set(fields)):
            if not (key in old_names and rel(page) == "docs/configuration.md"):
                named.setdefault(key, rel(page))
    assert len(named) > 30
    wrong = {key: page for key, page in named.items() if key.split(".")[1] not in fields[key.split(".")[0]]}
    assert not wrong, f"config keys that do not exist (key: first page naming it): {wrong}"


def test_the_configuration_page_lists_every_section_and_preset_as_the_code_has_them():
    """docs/configuration.md: one row per config section, whose backticked keys are fields of that
    section; one row per preset, with the layers / width / heads it builds."""
    from transfusion.config import load_config
    from transfusion.presets import PRESETS

    fields = config_fields()
    text = (DOCS / "configuration.md").read_text()
    table = text[text.index("| section | what | keys you will use |"):].split("\n\n")[0]
    sections = dict(re.findall(r"^\| `(\w+)` \| [^|]* \| (.*) \|$", table, re.M))
    assert set(sections) == set(fields), "docs/configuration.md's table of sections"
    for name, keys in sections.items():
        named = set(re.findall(r"`(\w+)`", keys))
        assert named and named <= fields[name], f"{name}: {sorted(named - fields[name])}"
    presets = {name: tuple(map(int, shape)) for name, *shape in
               re.findall(r"^\| `([\w.]+)` \| (\d+) / (\d+) / (\d+) \|", text, re.M)}
    assert set(presets) == set(PRESETS)
    for name, shape in presets.items():
        model = load_config(name).model
        assert shape == (model.n_layers, model.dim, model.n_heads), name


# ---------------------------------------------------------------- (b) paths and links
ROOTED = re.compile(r"(?<![\w/.~-])((?:configs|benchmarks|examples|experiments|docs|tests|transfusion)/[\w./*{}-]*)")


def gitignored(path: str) -> bool:
    """Whether ``path`` (relative to the repository) is under a pattern of .gitignore (files
    that commands create, such as benchmarks/.peer-venv)."""
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    for pattern in patterns:
        bare = pattern.strip("/")
        if "/" in bare and any(fnmatch("/".join(parts[:i]), bare) for i in range(1, len(parts) + 1)):
            return True
        if "/" not in bare and any(fnmatch(part, bare) for part in parts):
            return True
    return False


def rooted_paths(text: str) -> set[str]:
    """Repository paths named anywhere in the text (a glob or template is cut at its first * or {)."""
    found = set()
    for raw in ROOTED.findall(URL.sub(" ", text)):
        path = re.split(r"[*{]", raw)[0].rstrip("./")
        if path:
            found.add(path)
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(page.read_text()), re.M)}


def test_every_path_and_link_in_the_docs_exists():
    missing = []
    links = 0
    for page in PAGES:
        text = page.read_text()
        for path in sorted(rooted_paths(text)):
            if not (ROOT / path).exists() and not gitignored(path):
                missing.append(f"{rel(page)}: {path}")
        for target in LINK.findall(INLINE.sub("", prose(text))):
            if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
                continue
            links += 1
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                missing.append(f"{rel(page)}: link {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                missing.append(f"{rel(page)}: link {target} (no such heading in {rel(dest)})")
    assert links > 50
    assert not missing, "\n".join(missing)


def test_every_page_is_reachable_from_the_index():
    index = DOCS / "index.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for target in LINK.findall(prose(index.read_text()))}
    assert not [rel(p) for p in PAGES[1:] if p != index and p.resolve() not in linked]
    assert "docs/index.md" in LINK.findall(README.read_text())


def test_the_path_rules_see_what_they_should():
    assert rooted_paths("see docs/speed.md. and `configs/x.yaml`, docs/results/*.md, a/docs/no") == \
        {"docs/speed.md", "configs/x.yaml", "docs/results"}
    assert gitignored("benchmarks/.peer-venv") and gitignored("runs/tiny") and not gitignored("docs/speed.md")
    assert slug("`transfusion eval` on the README command 1 checkpoint") == \
        "transfusion-eval-on-the-readme-command-1-checkpoint"
    assert slug("Set-up: two commands") == "set-up-two-commands"


# ---------------------------------------------------------------- (c) the module map
ARCHITECTURE = DOCS / "architecture.md"


def package_modules() -> list[str]:
    return sorted(rel(p) for p in (ROOT / "transfusion").rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def test_every_module_of_the_package_is_mapped_in_architecture_md():
    """A row ``| `transfusion/x.py` | what it holds |`` for every module, and none for a module
    that is gone: a module added later fails here until it is mapped."""
    rows = dict(re.findall(r"^\|\s*`(transfusion/[\w/]+\.py)`\s*\|\s*(\S.*?)\s*\|\s*$", ARCHITECTURE.read_text(), re.M))
    modules = package_modules()
    assert len(modules) > 50
    unmapped = [m for m in modules if m not in rows]
    assert not unmapped, f"modules missing from the map in docs/architecture.md: {unmapped}"
    stale = [m for m in rows if m not in modules]
    assert not stale, f"docs/architecture.md maps modules that do not exist: {stale}"


def test_the_layer_table_is_the_one_the_structure_test_enforces():
    spec = importlib.util.spec_from_file_location("structure_rules", ROOT / "tests" / "test_structure.py")
    structure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(structure)
    documented = {}
    for layer, names in re.findall(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", ARCHITECTURE.read_text(), re.M):
        for name in re.findall(r"`(transfusion(?:\.\w+)*)`", names):
            documented[name] = int(layer)
    assert documented == structure.LAYERS


# ---------------------------------------------------------------- (d) runnable python
def runnable_blocks() -> list[tuple[str, str]]:
    """(page, code): every python block of the README, and in docs/*.md the python blocks on the
    line after a ``<!-- runnable -->`` comment."""
    blocks = [("README.md", body) for lang, body in fences(README.read_text()) if lang == "python"]
    for page in PAGES[1:]:
        for body in re.findall(r"^<!-- runnable -->\n```python\n(.*?)^```", page.read_text(), re.S | re.M):
            blocks.append((rel(page), body))
    return blocks


def test_the_python_blocks_run_on_a_trained_run(debug_run, tmp_path):
    """Each block in a fresh interpreter, with runs/tiny standing for the shared debug run and
    every step count cut to 2."""
    blocks = runnable_blocks()
    assert any(page == "README.md" for page, _ in blocks) and len(blocks) >= 3
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(debug_run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for page, code in blocks:
        assert "runs/tiny" in code, f"{page}: a runnable block that reads no run"
        code = re.sub(r"\b(num_inference_steps|steps)=\d+", r"\1=2", code)
        with served_if_called(code, tmp_path, env) as code:
            run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=300)
        assert run.returncode == 0, f"{page}:\n{code}\n{run.stderr[-3000:]}"


@contextlib.contextmanager
def served_if_called(code: str, cwd: Path, env: dict):
    """A block that calls the server (``127.0.0.1:7860``) runs against ``transfusion serve runs/tiny``,
    started on a free port (the block is rewritten to it) and stopped after it."""
    if "127.0.0.1:7860" not in code:
        yield code
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "transfusion", "serve", "runs/tiny", "--port", str(port)],
                               cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5).close()
                break
            except OSError:
                assert process.poll() is None and time.time() < deadline, process.stderr.read()[-3000:]
                time.sleep(0.2)
        yield code.replace("127.0.0.1:7860", f"127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(30)


# ---------------------------------------------------------------- (e) the README's figures
UNITS = ("%", "x", "k", "ms", "s", "seconds", "second", "min", "minutes", "minute", "hours", "hour", "h", "GB", "GiB",
         "MB", "MiB", "KiB", "px", "B", "M")
NUMBER = re.compile(r"(?<![\w.])\d[\d.,]*")
UNIT_AFTER = re.compile(r" ?(?:" + "|".join(sorted(map(re.escape, UNITS), key=len, reverse=True)) + r")(?![\w%])")


def figures(text: str) -> list[str]:
    """The figures a text states: each number written with a decimal point or followed by a unit
    (``96.4``, ``12 min``, ``41%``, ``1.5x``), as written. A token with two or more dots (a version
    such as 2.13.0, an address) is not a figure; nor is a whole number with no unit (a count)."""
    out = []
    for m in NUMBER.finditer(text):
        raw = m.group(0)
        number = raw.rstrip(".,")
        if number.count(".") > 1:
            continue
        unit = UNIT_AFTER.match(text, m.end()) if number == raw else None
        if unit:
            out.append(number + unit.group(0))
        elif "." in number:
            out.append(number)
    return out


def readme_figure_text() -> str:
    """What of the README states figures: its prose (inline code, link targets and URLs left out)
    and the comments of its code blocks (the commands themselves left out)."""
    text = README.read_text()
    comments = [m.group(1) for _, body in fences(text) for line in body.splitlines()
                if (m := re.search(r"(?:^|\s)#(.*)$", line))]
    body = INLINE.sub(" ", prose(text))
    body = LINK.sub(lambda m: m.group(0)[: m.group(0).index("](")] + "]", body)
    return re.sub(r"\s+", " ", URL.sub(" ", body + "\n" + "\n".join(comments)))


def docs_text() -> str:
    texts = [p.read_text() for p in DOCS.rglob("*") if p.suffix in (".md", ".txt", ".json", ".jsonl")]
    return re.sub(r"\s+", " ", "\n".join(texts))


def test_every_figure_in_the_readme_comes_from_docs():
    stated = figures(readme_figure_text())
    assert len(stated) >= 5
    corpus = docs_text()
    absent = [f for f in dict.fromkeys(stated)
              if not re.search(r"(?<![\w.])" + re.escape(f) + r"(?![\d%]|\.\d)", corpus)]
    assert not absent, f"figures in README.md that no file under docs/ states: {absent}"


def test_the_figure_rule_reads_numbers_as_meant():
    assert figures("FID 96.4, in 12 min, 41% and 1.5x; 6.6 minutes") == ["96.4", "12 min", "41%", "1.5x", "6.6 minutes"]
    assert figures("torch 2.13.0 on 2 cores, 127.0.0.1, 1,200 steps, 7.2k tokens/s, Python 3.10.") == \
        ["7.2k", "3.10"]


# ---------------------------------------------------------------- the slow tests
def test_the_slow_tests_listed_in_contributing_md_are_the_ones_marked_slow():
    marked = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    ast.unparse(d).startswith("pytest.mark.slow") for d in node.decorator_list):
                marked.add(f"{rel(path)}::{node.name}")
    text = (DOCS / "contributing.md").read_text()
    listed = set(re.findall(r"`(tests/test_\w+\.py::\w+)`", text))
    assert listed == marked
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
             "ten": 10, "eleven": 11, "twelve": 12}
    (count,) = re.findall(r"There are (\w+):", text)
    assert words.get(count, int(count) if count.isdigit() else -1) == len(marked)
