"""The configuration examples of SAGATOR's README and services documentation load in mailsift.

Each example is a file of tests/data/sagator/ (extracted by hand; ``*.conf`` as SAGATOR named its
config, ``sagator.conf``, kept as written and so not linted) whose header says where it comes from
and what it must do::

    # SAGATOR example: sagator-readme.txt 3.1 a) (...)
    # reference: <the example, as the reference prints it>
    # replaced: <a placeholder of the reference> -> <the value the file uses>   (optional)
    # expect: loads | gone NAME [NAME...] | native NAME | icap

``loads``: the file loads.  ``gone NAME...``: it fails with exactly the names' "gone" messages
(mailsift.compat.sagator.GONE) in one error: at the first one's line, then ``; line N: `` each
other.  ``native NAME``: a name issue 16 added to mailsift: the file loads, or the native object
refuses, in its own words at that line, what this machine lacks (fusefs: the example's
``/realhome``) or what mailsift does not allow (rlimit: SAGATOR's ``AS=30000000`` is too small).
``icap``: ``http_proxy`` is the ICAP service
(services/icap.py, built beside this): without it, the message saying so; with it, the file
loads and the service is icap on 1344.

The reference check reads ../shared/reference (beside the repository, as CI clones it): every
example's reference text is in the reference, the file contains it (after its replacements), and
every SRV/SCANNERS example of the reference has a file.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import mailsift
from mailsift import config as config_module
from mailsift.compat import sagator
from mailsift.errors import ConfigError
from tests.helpers.paths import REPO

EXAMPLES = REPO / "tests" / "data" / "sagator"
REFERENCE = REPO.parent / "shared" / "reference"


@dataclass(frozen=True)
class Example:
    path: Path
    source: str  # sagator-readme.txt or sagator-services.txt
    reference: str
    replaced: tuple[tuple[str, str], ...]
    expect: str
    name: str


def parse(path: Path) -> Example:
    fields: dict[str, str] = {}
    replaced: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"# (SAGATOR example|reference|replaced|expect): (.*)$", line)
        if match is None:
            continue
        if match.group(1) == "replaced":
            old, new = match.group(2).split(" -> ")
            replaced.append((old, new))
        else:
            fields[match.group(1)] = match.group(2)
    expect, _, name = fields["expect"].partition(" ")
    return Example(
        path, fields["SAGATOR example"].split()[0], fields["reference"], tuple(replaced), expect, name.strip()
    )


ALL = sorted(EXAMPLES.glob("*.conf"))


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def load(path: Path) -> config_module.Config:
    with warnings.catch_warnings():
        # SAGATOR's configs are Python 2 era: '\.exe' in a plain string is a DeprecationWarning
        # (3.11; a SyntaxWarning from 3.12), never an error outside the suite's "error" filter:
        # readme 3.2 c)'s EXECUTABLES is one.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        return config_module.load(str(path))


def example_line(example: Example, name: str) -> int:
    for number, line in enumerate(example.path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("#") and f"{name}(" in line:
            return number
    raise AssertionError(f"{name}( not in {example.path.name}")


def test_there_are_examples_of_both_documents() -> None:
    sources = [parse(path).source for path in ALL]
    assert sources.count("sagator-readme.txt") >= 14
    assert sources.count("sagator-services.txt") >= 18


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSIFT_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_the_example_loads_or_names_what_replaces_it(path: Path) -> None:
    example = parse(path)
    if example.expect == "loads":
        config = load(path)
        assert config.path == str(path)
        return
    if example.expect == "gone":  # NAME [NAME...]: each gone name of the example, in the order written
        with pytest.raises(ConfigError) as caught:
            load(path)
        names = example.name.split()
        messages = [sagator.gone_message(name) or "" for name in names]
        assert all(m.startswith(f"{n}() is gone from mailsift (") for n, m in zip(names, messages, strict=True))
        line = example_line(example, names[0])
        others = [f"line {example_line(example, n)}: {m}" for n, m in zip(names[1:], messages[1:], strict=True)]
        expected = "; ".join([messages[0], *others])
        assert str(caught.value) == f"{path}:{line}: {expected}"
        return
    if example.expect == "native":
        # It loads, or refuses what this machine lacks in its own words (fusefs: "source /realhome
        # is not a directory", "needs pyfuse3") at the example's line.
        assert hasattr(mailsift, example.name)
        refused = ""
        try:
            load(path)
        except ConfigError as error:
            refused = str(error)
        if refused:
            assert refused.startswith(f"{path}:{example_line(example, example.name)}: {example.name}")
        return
    assert example.expect == "icap", example.expect
    if importlib.util.find_spec("mailsift.services.icap") is None:
        with pytest.raises(ConfigError) as caught:
            load(path)
        assert str(caught.value) == (
            f"{path}:{example_line(example, 'http_proxy')}: http_proxy() is the ICAP service "
            "(icap(SCANNERS, host, 1344) behind Squid), which this mailsift does not have yet"
        )
        return
    config = load(path)  # with services/icap.py merged: the ICAP service on ICAP's port
    (service,) = config.services
    assert type(service).__name__ == "icap"
    assert service.port == sagator.ICAP_PORT


def test_every_expectation_is_known() -> None:
    for path in ALL:
        example = parse(path)
        assert example.expect in {"loads", "gone", "native", "icap"}, path.name
        if example.expect == "gone":
            assert set(example.name.split()) <= set(sagator.GONE)
        if example.expect == "native":
            assert hasattr(mailsift, example.name), example.name


# --------------------------------------------------------------------------- against the reference


def reference_text(source: str) -> str:
    """The reference as one line; sagator-services.txt's `` | `` line frames taken out."""
    path = REFERENCE / source
    if not path.exists():
        pytest.skip(f"the reference is not beside the repository ({path})")
    text = path.read_text(encoding="utf-8")
    return re.sub(r"(?<= )\|(?= )", "", text) if source == "sagator-services.txt" else text


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_the_example_is_the_reference_text(path: Path) -> None:
    example = parse(path)
    assert squeeze(example.reference) in squeeze(reference_text(example.source))
    code = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#"))
    expected = example.reference
    for old, new in example.replaced:
        assert old in expected, f"{old!r} is not in the reference text"
        expected = expected.replace(old, new)
    # the reference's comments (reporter groups) are kept as written: compare without '#' lines' loss
    assert squeeze(expected.replace("# send other to root", "")) in squeeze(code.replace("# send other to root", ""))


def spans(source: str) -> list[tuple[int, int]]:
    text = squeeze(reference_text(source))
    found = []
    for path in ALL:
        example = parse(path)
        if example.source == source:
            start = text.index(squeeze(example.reference))
            found.append((start, start + len(squeeze(example.reference))))
    return found


def test_every_configuration_example_of_the_readme_has_a_file() -> None:
    text = squeeze(reference_text("sagator-readme.txt"))
    covered = spans("sagator-readme.txt")
    # SRV=[service1, ...] and SCANNERS=[scanner1, ...] are the general form, "parsemail()" a table row
    pattern = r"(SRV=\[(?!service1)|SCANNERS=(?!\[scanner1)|reporter\(begin|milter\(\"|parsemail\((?!\)))"
    starts = [m.start() for m in re.finditer(pattern, text)]
    # "parsemail(decompress(...))" is the README's example of what cannot be written (4.): not a config
    cannot = text.index("parsemail(decompress(...))")
    missing = [text[s : s + 60] for s in starts if s != cannot and not any(a <= s < b for a, b in covered)]
    assert len(starts) >= 12
    assert missing == []


def test_every_example_of_the_services_document_has_a_file() -> None:
    text = squeeze(reference_text("sagator-services.txt"))
    extracted = [squeeze(parse(path).reference) for path in ALL]
    examples = [m.end() for m in re.finditer(r"(Example|or):", text)]
    missing = [
        text[at : at + 60]
        for at in examples
        if not text.startswith("Seedefaultconfigfileforexample", at)  # webq_jinja: its usage line has a file
        and not any(text.startswith(reference, at) for reference in extracted)
    ]
    assert len(examples) >= 16
    assert missing == []
