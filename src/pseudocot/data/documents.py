"""A user's own documents, read as text and cut into chunks that remember where they came from.

    docs = read_documents(["notes/", "report.pdf"])          # Documents, and the files that could not be read
    for ch in chunk_documents(docs.documents, word_spans, max_tokens=384, overlap=64):
        assert docs.text_of(ch.document)[ch.start:ch.end] == ch.text

Readers by suffix: `.txt` and `.md` (UTF-8 as written), `.html`/`.htm` (the text only: no tags, scripts
or styles; blocks end in a newline), `.pdf` (pypdf's text of each page, pages joined by a blank line)
and `.jsonl` (one document per line, its `text_field`; the document is named `FILE:LINE`). A folder is
read recursively in name order; files with other suffixes are skipped. A file that cannot be read (not
UTF-8, a broken PDF, a JSONL line without the field) is reported in one line and the rest go on.

A document's name is its path relative to the folder it was found in (a file given by itself: its
name), with `/` separators: `source = NAME#START-END` names a chunk's characters in that document's
text, exactly as these readers return it, so anyone holding the same documents can find it again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from pseudocot.errors import DataError

SUFFIXES = (".txt", ".md", ".html", ".htm", ".pdf", ".jsonl")
Spans = Callable[[str], list[tuple[int, int]]]
"""A tokenizer as chunking sees it: text -> the (start, end) character span of each token, in order."""


@dataclass(frozen=True)
class Document:
    name: str
    """Path relative to the folder it was read from (`/` separators); `FILE:LINE` for a JSONL row."""
    text: str


@dataclass(frozen=True)
class Chunk:
    document: str
    start: int
    """First character, in the document's text."""
    end: int
    """One past the last character."""
    text: str
    """`document.text[start:end]`."""
    tokens: int

    @property
    def source(self) -> str:
        """`NAME#START-END`: the chunk's id, and the `source` of every question written from it."""
        return f"{self.document}#{self.start}-{self.end}"


@dataclass
class Documents:
    documents: list[Document] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    """`{"path", "reason"}` per file (or JSONL line) that could not be read."""
    skipped: int = 0
    """Files in the folders with a suffix no reader takes."""

    def text_of(self, name: str) -> str | None:
        return next((d.text for d in self.documents if d.name == name), None)


# --------------------------------------------------------------------------------------------
# Readers.
# --------------------------------------------------------------------------------------------


class _Text(HTMLParser):
    """The text of an HTML page: script, style and head contents dropped; block elements end a line."""

    BLOCKS = frozenset("p div br li tr h1 h2 h3 h4 h5 h6 section article header footer blockquote pre table ul ol dt dd title".split())
    HIDDEN = frozenset("script style noscript template head".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.hidden = 0  # a head without its end tag (valid HTML) ends here
        elif tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(markup: str) -> str:
    """The visible text of an HTML page.

    >>> html_text("<html><head><title>T</title><style>p{}</style></head><body><p>One  two.</p><p>Three &amp; four</p></body></html>")
    'One two.\\n\\nThree & four'
    >>> html_text("<html><head><meta charset=utf-8><title>T</title><body><p>No end of head.</p>")
    'No end of head.'
    """
    parser = _Text()
    parser.feed(markup)
    parser.close()
    return parser.text()


def pdf_text(path: Path) -> str:
    """pypdf's text of each page, pages joined by a blank line."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError("the PDF is encrypted; save a copy without a password")
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except DataError:
        raise
    except Exception as e:  # pypdf raises many kinds (PdfReadError, DependencyError for AES, struct errors): one line each
        raise DataError(f"pypdf cannot read it ({type(e).__name__}: {e})") from None


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _read(path: Path, name: str, text_field: str, out: Documents) -> None:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            for i, line in enumerate(_utf8(path).split("\n"), 1):  # JSON escapes line breaks: only \n ends a row
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    out.unreadable.append({"path": f"{name}:{i}", "reason": "broken JSON"})
                    continue
                text = row.get(text_field) if isinstance(row, dict) else None
                if not isinstance(text, str) or not text.strip():
                    out.unreadable.append({"path": f"{name}:{i}", "reason": f"no text in field '{text_field}'"})
                    continue
                out.documents.append(Document(f"{name}:{i}", text))
            return
        text = pdf_text(path) if suffix == ".pdf" else html_text(_utf8(path)) if suffix in (".html", ".htm") else _utf8(path)
    except (DataError, OSError) as e:
        out.unreadable.append({"path": name, "reason": str(e)})
        return
    if not text.strip():
        out.unreadable.append({"path": name, "reason": "no text" + (" (a scanned PDF has none: run OCR first)" if suffix == ".pdf" else "")})
        return
    out.documents.append(Document(name, text))


def document_files(paths: Sequence[str | Path]) -> Iterator[tuple[Path, str]]:
    """(file, name) of every document under `paths`, folders recursively in name order."""
    for p in map(Path, paths):
        if p.is_dir():  # hidden files and folders (.git, .ipynb_checkpoints) are not documents
            for f in sorted(q for q in p.rglob("*") if q.is_file() and not any(part.startswith(".") for part in q.relative_to(p).parts)):
                yield f, f.relative_to(p).as_posix()
        elif p.is_file():
            yield p, p.name
        else:
            raise DataError(f"{p}: no such file or folder; give documents as files or folders that exist.")


def read_documents(paths: Sequence[str | Path], text_field: str = "text", warn: Callable[[str], None] | None = print) -> Documents:
    """Every readable document under `paths`; each unreadable one is reported through `warn` in one line."""
    out = Documents()
    seen: set[str] = set()
    for path, name in document_files(paths):
        if path.suffix.lower() not in SUFFIXES:
            out.skipped += 1
            continue
        if name in seen:
            raise DataError(f"{path}: a second document named '{name}'; give folders whose files have distinct relative paths.")
        seen.add(name)
        before = len(out.unreadable)
        _read(path, name, text_field, out)
        for bad in out.unreadable[before:]:
            if warn is not None:
                warn(f"skipped {bad['path']}: {bad['reason']}")
    return out


# --------------------------------------------------------------------------------------------
# Chunks.
# --------------------------------------------------------------------------------------------


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated words as tokens (when no model tokenizer is given)."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def tokenizer_spans(tokenizer: object) -> Spans:
    """A Hugging Face fast tokenizer's tokens as character spans (its offset mapping)."""

    def spans(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # type: ignore[operator]
        return [(int(a), int(b)) for a, b in enc["offset_mapping"] if b > a]

    return spans


_SENTENCE_END = re.compile(r"[.!?:;]['\")\]]*$")


def _break_after(text: str, spans: Sequence[tuple[int, int]], i: int) -> bool:
    """Whether a chunk may end after token i: a sentence ends there, or a line does."""
    a, b = spans[i]
    nxt = spans[i + 1][0] if i + 1 < len(spans) else len(text)
    return bool(_SENTENCE_END.search(text[a:b])) or "\n" in text[b:nxt]


def chunk_text(text: str, spans: Sequence[tuple[int, int]], max_tokens: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start char, end char, tokens) of each chunk: at most `max_tokens` tokens, ending at a sentence or line
    break in its second half where there is one; the next chunk starts `overlap` tokens before the end.

    >>> t = "One two three. Four five six. Seven eight."
    >>> [t[a:b] for a, b, _ in chunk_text(t, word_spans(t), 4, 1)]
    ['One two three.', 'three. Four five six.', 'six. Seven eight.']
    """
    if overlap >= max_tokens:
        raise DataError(f"the chunk overlap ({overlap} tokens) must be smaller than the chunk ({max_tokens} tokens).")
    out: list[tuple[int, int, int]] = []
    i, n = 0, len(spans)
    while i < n:
        j = min(i + max_tokens, n)  # tokens i..j-1
        if j < n:
            cut = next((k + 1 for k in range(j - 1, i + max_tokens // 2 - 2, -1) if _break_after(text, spans, k)), None)
            j = cut or j
        out.append((spans[i][0], spans[j - 1][1], j - i))
        if j >= n:
            break
        i = max(j - overlap, i + 1)
    return out


def chunk_documents(documents: Sequence[Document], spans: Spans, max_tokens: int, overlap: int) -> list[Chunk]:
    """Every document's chunks, in document order."""
    return [Chunk(d.name, a, b, d.text[a:b], n) for d in documents for a, b, n in chunk_text(d.text, spans(d.text), max_tokens, overlap)]


_SOURCE = re.compile(r"^(?P<doc>.+)#(?P<start>\d+)-(?P<end>\d+)$")


def parse_source(source: str) -> tuple[str, int, int] | None:
    """(document, start, end) of `NAME#START-END`, else None.

    >>> parse_source("notes/a.md#10-250"), parse_source("a.md")
    (('notes/a.md', 10, 250), None)
    """
    m = _SOURCE.match(source.strip())
    if not m or int(m["end"]) < int(m["start"]):
        return None
    return m["doc"], int(m["start"]), int(m["end"])
