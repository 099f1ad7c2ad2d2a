"""The zoo: published robust CLIPs by name (``--model fare2-vitl14``), their formats and numbers.

The entries ship in ``zoo.yaml`` next to this module (facts copied from the public sources each
entry cites; ``null`` means not found). Each entry's ``load:`` block says how it loads:

- ``format``: ``open_clip_hub`` (an open_clip model folder: ``open_clip_config.json`` and
  weights; or its full state dict file), ``vision_state_dict`` (a state dict of open_clip's
  ``model.visual`` only; the text tower and logit scale come from ``base``),
  ``training_checkpoint`` (a dict holding ``vision_encoder_state_dict``, loaded as the former),
  ``full_state_dict`` (a state dict of the whole open_clip CLIP), ``transformers`` (a
  ``CLIPModel`` folder), or ``classifier``/``llava`` (listed, not loadable: not CLIPs);
- ``arch`` and ``quick_gelu``: the open_clip architecture built for the raw formats;
- where the weights are: ``hub`` (Hugging Face repo; with ``file`` for a single raw file),
  ``url`` (downloaded, resumable, checked against ``sha256`` when given), or ``page`` (a page to
  download from by hand; pass the file with ``--pretrained``);
- ``base``: the rest of a vision-only model: an open_clip pretrained tag of ``arch``, the path
  of a full open_clip state dict, or ``random``; ``tokenizer``: where a ``transformers``
  folder without tokenizer files gets one; ``alternates``: other published files.

Users add entries of the same schema (a YAML file with a ``checkpoints:`` list): with
``$MMCOA_ZOO`` (files separated by ``os.pathsep``) for every command (suites and ``analyze``
included), or ``--zoo FILE`` on the commands whose ``--model`` flag the main parser defines
(``eval``, ``train``, ``retrieval``) and on ``mmcoa zoo``. A user entry with a shipped name replaces it (e.g. to point
``base`` at a local file).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmcoa.errors import MmcoaError, UnknownNameError

ZOO_ENV = "MMCOA_ZOO"
ZOO_FILE = Path(__file__).with_name("zoo.yaml")
CLIP_FORMATS = (
    "open_clip_hub",
    "vision_state_dict",
    "training_checkpoint",
    "full_state_dict",
    "transformers",
)
NOT_CLIP_FORMATS = ("classifier", "llava")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_added_files: list[str] = []
_parsed: dict[tuple, list] = {}


@dataclass(frozen=True)
class ZooEntry:
    """One checkpoint: what the listing shows, how it loads (``load``), and every fact (``facts``)."""

    name: str
    method: str
    arch: str
    train_eps: str | None
    format: str
    load: dict
    published: tuple = ()
    facts: dict = field(default_factory=dict, compare=False, repr=False)
    origin: str = ""

    @property
    def is_clip(self) -> bool:
        return self.format in CLIP_FORMATS

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple((self.facts.get("normalization") or {}).get("mean") or CLIP_MEAN)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple((self.facts.get("normalization") or {}).get("std") or CLIP_STD)

    def protocols(self) -> list[str]:
        """``ref@eps`` of each published result (``(none)`` when it publishes no numbers)."""
        out = []
        for item in self.published:
            protocol = (item or {}).get("protocol") or {}
            if not isinstance(protocol, dict) or not protocol.get("ref"):
                continue
            eps = f"@{protocol['eps']}" if protocol.get("eps") else ""
            out.append(f"{protocol['ref']}{eps}" + ("" if item.get("results") else " (no numbers)"))
        return out


def add_zoo_file(path: str) -> None:
    """Register a user's zoo YAML for this process (``--zoo FILE``)."""
    read_entries(path)  # a bad file is one line now, not at first use
    if path not in _added_files:
        _added_files.append(path)


def zoo_files() -> list[str]:
    """The shipped file, then ``$MMCOA_ZOO``'s files, then those of ``--zoo``."""
    user = [p for p in os.environ.get(ZOO_ENV, "").split(os.pathsep) if p]
    return [str(ZOO_FILE), *user, *_added_files]


def entries() -> dict[str, ZooEntry]:
    """Every entry by name; a later file's entry replaces an earlier one of the same name."""
    out: dict[str, ZooEntry] = {}
    for path in zoo_files():
        out.update((entry.name, entry) for entry in read_entries(path))
    return out


def is_zoo_name(name: str) -> bool:
    return name in entries()


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name`` (or with ``name`` as its only alias); one line otherwise."""
    known = entries()
    if name in known:
        return known[name]
    by_alias = [
        e for e in known.values() if name.lower() in (a.lower() for a in e.facts.get("aliases") or [])
    ]
    if len(by_alias) == 1:
        return by_alias[0]
    if by_alias:
        names = ", ".join(e.name for e in by_alias)
        raise UnknownNameError(f"zoo alias {name!r} names {len(by_alias)} entries: {names}; pick one")
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownNameError(f"unknown zoo name {name!r}; {hint}mmcoa zoo lists the {len(known)} names")


def read_entries(path: str | os.PathLike) -> list[ZooEntry]:
    """Parse one zoo YAML file (once per modification); a missing file or a malformed entry is
    one line."""
    path = os.path.expanduser(os.fspath(path))
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None
    if (path, stamp) not in _parsed:
        _parsed[(path, stamp)] = _parse(path)
    return _parsed[(path, stamp)]


def _parse(path: str) -> list[ZooEntry]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MmcoaError(
            f"zoo file {path!r} is unreadable ({type(error).__name__}); expected a YAML file"
        ) from error
    items = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise MmcoaError(f"zoo file {path!r} has no 'checkpoints:' list; see {ZOO_FILE.name} for the schema")
    return [_entry(item, path) for item in items]


def _entry(item: object, path: str) -> ZooEntry:
    if not isinstance(item, dict) or not item.get("name"):
        raise MmcoaError(f"zoo file {path!r}: an entry without a name; each entry needs name: and load:")
    load = item.get("load") or {}
    fmt = load.get("format")
    if fmt not in CLIP_FORMATS + NOT_CLIP_FORMATS:
        raise MmcoaError(
            f"zoo file {path!r}: entry {item['name']!r} has load.format {fmt!r}; "
            f"accepted: {', '.join(CLIP_FORMATS + NOT_CLIP_FORMATS)}"
        )
    return ZooEntry(
        name=str(item["name"]),
        method=str(item.get("method") or ""),
        arch=str(load.get("arch") or item.get("arch") or ""),
        train_eps=item.get("train_eps"),
        format=fmt,
        load=dict(load),
        published=tuple(item.get("published") or ()),
        facts=dict(item),
        origin=path,
    )


# -- what `mmcoa zoo` prints ---------------------------------------------------------------------
LISTING_COLUMNS = ("name", "method", "arch", "train eps", "format", "published protocols")


def listing_rows(known: dict[str, ZooEntry] | None = None) -> list[list[str]]:
    """One row per entry (the columns of :data:`LISTING_COLUMNS`); non-CLIPs marked."""
    rows = []
    for entry in (known or entries()).values():
        fmt = entry.format if entry.is_clip else f"{entry.format} (not a CLIP)"
        protocols = ", ".join(entry.protocols()) or "-"
        rows.append(
            [entry.name, _short(entry.method), _short(entry.arch), entry.train_eps or "-", fmt, protocols]
        )
    return rows


def _short(text: str) -> str:
    return re.split(r" \(|:|,|;", text)[0].strip() or "-"


def format_listing(known: dict[str, ZooEntry] | None = None) -> str:
    rows = [list(LISTING_COLUMNS), *listing_rows(known)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(LISTING_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def markdown_table(known: dict[str, ZooEntry] | None = None) -> str:
    """The listing as a markdown table (docs/reproduce.md holds it; a test keeps them equal)."""
    rows = listing_rows(known)
    lines = ["| " + " | ".join(LISTING_COLUMNS) + " |", "|" + "---|" * len(LISTING_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows])


def format_entry(entry: ZooEntry) -> str:
    """Everything the entry knows, as YAML (published numbers included)."""
    head = f"# {entry.name}: from {entry.origin}"
    if not entry.is_clip:
        head += f"\n# not loadable: {entry.facts.get('not_clip') or entry.format}"
    return head + "\n" + yaml.safe_dump(entry.facts, sort_keys=False, allow_unicode=True, width=110).rstrip()


def zoo_hint(name: str) -> str:
    """``"; close zoo names: ..."`` for an unknown model name, or ``""``."""
    close = difflib.get_close_matches(name, list(entries()), n=3, cutoff=0.6)
    return f"; close zoo names: {', '.join(close)}" if close else ""


# -- the command line's --zoo FILE -----------------------------------------------------------------
class ZooFileAction(argparse.Action):
    """``--zoo FILE``: registers the file while the command line is parsed (a bad file is the
    parser's one-line error), so the --model NAME it defines resolves everywhere after."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            add_zoo_file(values)
        except MmcoaError as error:
            parser.error(str(error))
        setattr(namespace, self.dest, values)


def parsers_taking_model(subparsers_action) -> list[argparse.ArgumentParser]:
    """Every (nested) sub-command parser with a ``--model`` option."""
    out = []
    for parser in dict.fromkeys(subparsers_action.choices.values()):
        if "--model" in parser._option_string_actions:
            out.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += parsers_taking_model(action)
    return out
