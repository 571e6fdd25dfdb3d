"""The README's commands, checked.

Every gpulab command the README and docs/ show (in code blocks and in inline code) must parse: its
command, options and option values, and for `gpulab train` and `gpulab workloads` its workload,
preset and `--set` keys and values. Every `make` target it names must exist.

The blocks marked `<!-- docs-check: run -->` run as printed, one after the other, in one
folder holding the files the README's first screen calls the user's own. Each command must end
as its shown output says (exit 2 where it shows `gpulab: error:`, else 0), and every output
line it shows must appear, in order, in what it prints, where numbers, run folders' times and
CPU names may differ.
"""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import typer

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARK = "<!-- docs-check: run -->"
# The machines the README's outputs were made on; where they are named, any CPU may stand.
README_MACHINES = ("AMD EPYC", "Intel(R) Xeon(R) Processor")
RUN_FOLDER = re.compile(r"runs/(\w+)/\d{8}T\d{6}\.\d{6}Z-\w+")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
CAPTION = re.compile(r"^(\S+: ).+?(\s+\(log p = )")  # gpulab predict caption's lines
BOX_ONLY = re.compile(r"^[\s━─┏┓┗┛┳┻╇┡┩┃┌┐└┘┬┴┼├┤═╸╺]*$")
PROGRAMS = ("gpulab", "torchrun", "make", "sbatch", "kubectl", "sky", "docker")  # start a command
SLURM_RECIPES = {"deploy/slurm/train.sbatch": "train", "deploy/slurm/bench-array.sbatch": "bench"}
SHELL_BREAKS = {";", "&&", "||", "|", "&", ">", ">>", "<"}


@dataclass
class Command:
    line: int  # where it starts in its file, from 1
    text: str  # as typed, continuation lines joined
    shown: list[str] = field(default_factory=list)  # the output the README shows under it
    mention: bool = False  # inline code in prose, not a whole command

    @property
    def refused(self) -> bool:
        """Shown failing on purpose (the README's bad-input examples)."""
        return any(s.startswith("gpulab: error:") for s in self.shown)


@dataclass
class Block:
    run: bool  # marked to run
    commands: list[Command]


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks: `$ ` lines are commands and the lines under them their output; in a
    block without `$`, each line that starts a known program is a command."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        fence, start = lines[i], i
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if fence.strip() not in ("```", "```console", "```sh", "```bash"):
            continue  # python, yaml, ...
        before = next((x for x in reversed(lines[:start]) if x.strip()), "")
        blocks.append(Block(before.strip() == RUN_MARK, _commands(body, start + 2)))
    return blocks


def _commands(body: list[str], first_line: int) -> list[Command]:
    dollar = any(x.startswith("$ ") for x in body)
    out: list[Command] = []
    k = 0
    while k < len(body):
        line = body[k]
        starts = line.startswith("$ ") if dollar else _starts_program(line)
        if not starts:
            if out and dollar:
                out[-1].shown.append(line)
            k += 1
            continue
        text, at = line[2:] if dollar else line, k
        while text.rstrip().endswith("\\") and k + 1 < len(body):
            k += 1
            text = text.rstrip()[:-1].rstrip() + " " + body[k].strip()
        out.append(Command(first_line + at, text.strip()))
        k += 1
    return out


def _starts_program(line: str) -> bool:
    words = line.split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return bool(words) and Path(words[0]).name in PROGRAMS


def inline_commands(text: str) -> list[Command]:
    """`gpulab ...` in inline code, where it is a whole command (no `[...]`, `A|B` or `...`)."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):  # a heading names a command
            continue
        for span in re.findall(r"`(gpulab [^`]+)`", line):
            if not re.search(r"\[|\||\.\.\.|…", span):
                found.append(Command(n, span, mention=True))
    return found


def words_of(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def invocations(command: str) -> list[tuple[str, list[str]]]:
    """The programs a shell line runs that this test checks: ("gpulab", args) and
    ("make", targets); the Slurm recipes pass their arguments on to gpulab."""
    words, found, k = words_of(command), [], 0
    while k < len(words):
        w = words[k]
        program = Path(w).name  # gpulab, .venv/bin/gpulab, -m gpulab
        if program in ("gpulab", "make") or w in SLURM_RECIPES:
            args = [] if program in ("gpulab", "make") else [SLURM_RECIPES[w]]
            k += 1
            while k < len(words) and words[k] not in SHELL_BREAKS:
                args.append(words[k])
                k += 1
            found.append(("make" if program == "make" else "gpulab", args))
        k += 1
    return found


def parse_problem(args: list[str], mention: bool = False) -> str | None:
    """What `gpulab ARGS` would refuse before running anything (a usage error, an unknown
    workload, preset or setting), or None. Nothing runs. A `mention` (inline code naming a
    command or an option in prose) may leave out what the command requires."""
    from gpulab.cli import _parse_sets, app
    from gpulab.runtime import GpulabError
    from gpulab.workloads.registry import get_workload

    try:
        cmd = typer.main.get_command(app)
        ctx = cmd.make_context("gpulab", list(args))
        while hasattr(cmd, "resolve_command"):  # a group: gpulab, gpulab data, ...
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                return None
            name, cmd, rest = cmd.resolve_command(ctx, rest)
            ctx = cmd.make_context(name, rest, parent=ctx)
        params = ctx.params
        workload = params.get("workload") or params.get("name")
        if ctx.info_name in ("train", "workloads") and workload and not workload.isupper():
            spec = get_workload(workload)  # (WORKLOAD is a placeholder)
            if params.get("resume") is None:
                spec.config(params.get("preset", "default"), _parse_sets(params.get("set_") or []))
    except typer.Exit as e:  # --help
        return None if e.exit_code == 0 else f"exit {e.exit_code}"
    except GpulabError as e:
        return str(e)
    except Exception as e:  # click's (typer's own copy of click's) usage errors
        if not hasattr(e, "format_message"):
            raise
        if mention and type(e).__name__ in ("MissingParameter", "BadOptionUsage"):
            return None
        return e.format_message()
    return None


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def all_commands() -> list[tuple[str, Command]]:
    """(file, command) for every command in the README and the docs, synopses left out
    (`gpulab probe [--quick]`)."""
    found = []
    for path in DOCS:
        text, name = path.read_text(), str(path.relative_to(ROOT))
        commands = [c for b in readme_blocks(text) for c in b.commands] + inline_commands(text)
        found += [(name, c) for c in commands if not re.search(r"\[--?\w", c.text)]
    return found


def test_the_readme_names_commands_of_every_kind():
    commands = [c for name, c in all_commands() if name == "README.md"]
    programs = {p for c in commands for p, _ in invocations(c.text)}
    assert programs == {"gpulab", "make"}
    assert len(commands) > 60
    runnable = [b for b in readme_blocks(README.read_text()) if b.run]
    assert len(runnable) >= 8, "the README marks its quick blocks with " + RUN_MARK


def test_every_gpulab_command_in_the_readme_and_docs_parses():
    targets, problems, checked = make_targets(), [], 0
    for name, c in all_commands():
        for program, args in invocations(c.text):
            checked += 1
            if program == "make":
                problems += [
                    f"{name}:{c.line}: no make target {t}" for t in args if t not in targets
                ]
                continue
            if c.refused:
                continue  # the run check sees it refused as shown
            if (problem := parse_problem(args, c.mention)) is not None:
                problems.append(f"{name}:{c.line}: {c.text!r}: {problem}")
    assert checked > 90
    assert problems == []


def test_every_file_of_the_project_a_command_names_exists():
    named = [
        (name, c.line, w)
        for name, c in all_commands()
        for w in words_of(c.text)
        if re.match(r"(deploy|benchmarks|docs|tests|src)/", w)
    ]
    assert len(named) > 10
    assert [n for n in named if not (ROOT / n[2]).exists()] == []


@pytest.mark.parametrize(
    "bad, wrong, good",
    [
        ("train stocks --sett epochs=1", "No such option: --sett", "train stocks --set epochs=1"),
        ("train stocks --set epoch=1", "unknown setting 'epoch'", "train stocks --set epochs=1"),
        ("train stocks --set epochs=x", "epochs", "train stocks --set epochs=2"),
        ("train stocks --preset tiny", "tiny", "train stocks --preset debug"),
        ("train stokcs", "unknown workload 'stokcs'", "train stocks"),
        ("workloads stokcs", "unknown workload 'stokcs'", "workloads stocks"),
        ("stylise a.jpg", "No such command 'stylise'", "stylize a.jpg"),
        ("data stocks --rows many", "--rows", "data stocks --rows 10 --out m.csv"),
        (
            "predict stocks --run",
            "requires an argument",
            "predict stocks --run r --data m.csv -o p.csv",
        ),
        ("--ofline runs", "No such option: --ofline", "--offline runs"),
    ],
)
def test_the_parse_check_refuses_what_gpulab_refuses(bad, wrong, good):
    assert wrong in (parse_problem(bad.split()) or "")
    assert parse_problem(good.split()) is None


def test_blocks_commands_and_their_output_are_read_as_a_reader_sees_them():
    text = "\n".join(
        [
            "intro",
            RUN_MARK,
            "",
            "```",
            "$ gpulab data stocks --rows 40 \\",
            "    --out m.csv   # a comment",
            "wrote m.csv: 40 rows",
            "$ head -1 m.csv; gpulab runs --out runs",
            "DATE,SP500",
            "```",
            "```python",
            "$ gpulab ignored",
            "```",
            "```",
            "make run     # the main job",
            "OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 -m gpulab train stocks",
            "```",
            "and `gpulab runs --out runs` or `gpulab predict style IMAGE|DIR`",
        ]
    )
    first, second = readme_blocks(text)
    assert first.run and not second.run
    assert [c.text for c in first.commands] == [
        "gpulab data stocks --rows 40 --out m.csv   # a comment",
        "head -1 m.csv; gpulab runs --out runs",
    ]
    assert [c.line for c in first.commands] == [5, 8]
    assert first.commands[0].shown == ["wrote m.csv: 40 rows"]
    assert invocations(first.commands[0].text) == [
        ("gpulab", ["data", "stocks", "--rows", "40", "--out", "m.csv"])
    ]
    assert invocations(first.commands[1].text) == [("gpulab", ["runs", "--out", "runs"])]
    sbatch = "sbatch --nodes=2 deploy/slurm/train.sbatch stocks --device cpu; cat slurm-1.out"
    assert invocations(sbatch) == [("gpulab", ["train", "stocks", "--device", "cpu"])]
    assert [invocations(c.text) for c in second.commands] == [
        [("make", ["run"])],
        [("gpulab", ["train", "stocks"])],
    ]
    assert [c.text for c in inline_commands(text)] == ["gpulab runs --out runs"]


# --- running the marked blocks ------------------------------------------------------------


def shape(line: str, machines: tuple[str, ...]) -> str:
    """A line with what may differ between runs and machines taken out: CPU names, the words
    of a predicted caption (another CPU's rounding may train other words), numbers (so run
    folders' times too) and runs of spaces (table padding)."""
    for m in machines:
        line = line.replace(m, "<cpu>")
    line = CAPTION.sub(r"\1<caption>\2", line)
    return " ".join(NUMBER.sub("#", line).split())


def compared_lines(shown: list[str]) -> list[str]:
    """The shown output lines a run must reproduce: not `...`, not a table's rules, not
    gpulab's notes on stderr (whether weights could be fetched depends on the network)."""
    keep = []
    for line in shown:
        s = line.strip()
        if not s or s == "..." or BOX_ONLY.match(s):
            continue
        if s.startswith("gpulab:") and not s.startswith("gpulab: error:"):
            continue
        keep.append(line)
    return keep


def first_missing(shown: list[str], printed: list[str], machines) -> str | None:
    """The first shown line (in order) that the printed lines do not hold, or None."""
    printed_shapes = [shape(p, machines) for p in printed]
    at = 0
    for line in compared_lines(shown):
        want = shape(line, machines)
        try:
            at = printed_shapes.index(want, at) + 1
        except ValueError:
            return line
    return None


def test_the_output_comparison_tells_drift_from_noise():
    machines = README_MACHINES + ("Some CPU",)
    shown = [
        "┏━━━━━┳━━━┓",
        "│ status    │ complete │",
        "│ test_mse  │ 0.00227671 │",
        "...",
        "gpulab: fetching weights from https://example.invalid",
        "run: runs/stocks/20261123T014024.911790Z-cpu",
    ]
    printed = [
        "      stocks on Some CPU       ",
        "│ status │ complete │",
        "│ test_mse │ 1.5e-05 │",
        "│ other │ 3 │",
        "run: runs/stocks/20261203T190000.123456Z-cpu",
    ]
    assert first_missing(shown, printed, machines) is None
    assert first_missing(["stocks on AMD EPYC"], printed, machines) is None
    said = ["a.png: a red circle  (log p = -2.5)"]
    assert first_missing(said, ["a.png: two blue squares  (log p = -3.1)"], machines) is None
    assert first_missing(said, ["b.png: a red circle  (log p = -2.5)"], machines) == said[0]
    assert first_missing(["│ status │ stopped │"], printed, machines) == "│ status │ stopped │"
    out_of_order = ["run: runs/stocks/20261123T014024.911790Z-cpu", "│ status │ complete │"]
    assert first_missing(out_of_order, printed, machines) == "│ status │ complete │"


def own_files(folder: Path) -> None:
    """The files the README's first screen calls the user's own, made as it says: scikit-learn's
    china.jpg as photo.jpg, gpulab's generated painting as painting.jpg, a generated market in
    the study's schema as prices.csv, and generated scenes with captions in photos/ and
    captions.csv."""
    import csv

    from gpulab.data.samples import bundled_photo, generated_painting
    from gpulab.workloads.caption.data import generate_scenes
    from gpulab.workloads.stocks.data import generate_stocks, write_stocks_csv

    bundled_photo("china").save(folder / "photo.jpg", quality=92)
    generated_painting(512).save(folder / "painting.jpg", quality=92)
    write_stocks_csv(generate_stocks(rows=4000, stocks=50, seed=0), folder / "prices.csv")
    scenes = generate_scenes(500, 64, seed=0)
    (folder / "photos").mkdir()
    with open(folder / "captions.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["image", "caption"])
        for i, name in enumerate(scenes.names):
            scenes.image(i).save(folder / "photos" / name)
            rows.writerows([name, c] for c in scenes.captions[i])


def test_the_readme_quick_blocks_run_as_printed(tmp_path):
    own_files(tmp_path)
    from gpulab.runtime.device import cpu_model

    machines = (*README_MACHINES, cpu_model())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "200",
        "TERM": "dumb",
    }
    latest: dict[str, str] = {}  # workload -> the run folder its last run printed
    problems = []
    for block in (b for b in readme_blocks(README.read_text()) if b.run):
        for c in block.commands:
            if torch.cuda.is_available() and "--device cuda" in c.text:
                continue  # the README shows it on a machine without a GPU
            text = RUN_FOLDER.sub(lambda m: latest.get(m.group(1), m.group(0)), c.text)
            done = subprocess.run(
                ["bash", "-c", text],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            printed = (done.stdout + done.stderr).splitlines()
            for folder in re.findall(r"^run: (\S+)$", done.stdout, re.M):
                latest[RUN_FOLDER.match(folder).group(1)] = folder
            where = f"README:{c.line} `{c.text}`"
            if done.returncode != (2 if c.refused else 0):
                tail = "\n".join(printed[-5:])
                problems.append(f"{where} exited {done.returncode}:\n{tail}")
            elif (missing := first_missing(c.shown, printed, machines)) is not None:
                problems.append(f"{where} printed no line like {missing!r}; it printed:\n"
                                + "\n".join(printed[-30:]))  # fmt: skip
    assert problems == [], "\n\n".join(problems)
