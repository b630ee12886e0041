"""Full-text search, the pure part: what a job's search document is, and the query
syntax. No database here; ``search_queries`` stores documents and runs queries.

**Words.** Text is folded (Unicode case folding, compatibility decomposition,
combining marks dropped: ``Café`` → ``cafe``) and cut into runs of letters and
digits; everything else separates words. So ``juggernautXL_v9.safetensors`` is the
words ``juggernautxl v9 safetensors`` and ``<lora:detail_tweaker:0.7>`` is ``lora
detail tweaker 0 7``. Both engines index exactly these words, made here: SQLite's
FTS5 gets them space-separated (its ``ascii`` tokenizer splits on nothing else),
PostgreSQL a ``tsvector`` literal with the same positions. So a query means the
same on both.

**A job's document** (``document``): for each node of the prompt graph in order, its
``class_type``, its ``_meta.title``, then every string input (prompt text, model,
LoRA, VAE, upscaler, ControlNet and input file names) and every integer input
(seeds, steps, sizes); then the output file names; then the error type and message.
At most ``MAX_POSITIONS`` words are indexed, and at most ``MAX_OCCURRENCES`` of any
one word (PostgreSQL keeps no more per word); a later occurrence, and a word longer
than ``MAX_WORD_LENGTH``, keeps its position but matches nothing (``FILLER``), on
both engines.

**Query syntax** (``parse``)::

    red fox              both words (in any order, anywhere in the job)
    "red fox"            the phrase: these words next to each other, in this order
    jugg*                a word starting with jugg
    juggernautXL_v9      a word that is several words is their phrase
    -blurry  -"low res"  without this word / phrase / prefix

At least one term must not be excluded. Malformed queries raise ``SearchSyntaxError``
(HTTP 400) saying what is wrong.

**Common grams** (``grams``): a phrase of two common words (``"best quality"``) is
slow to find from its words alone: FTS5 and PostgreSQL read the positions of every
job holding both words (133,273 jobs at 1M realistic jobs for 3,315 that hold the
phrase). So each adjacent pair of words of a document that are both in
``COMMON_WORDS`` is indexed once more as one token, the *gram* (``‧best‧quality``:
``GRAM_JOINER`` before each word), after the document's words (SQLite) or as a lexeme
without positions (PostgreSQL): no word's position moves, and ``Document.words``
(what ``matches`` reads) holds no gram. A phrase query then asks for its grams
(``fts5_match`` / ``tsquery`` with ``grams=True``): a phrase of two common words is
its gram alone, a longer one the AND of its grams and the phrase itself (exact), and
the gram's list of jobs is as short as the phrase's. ``GRAMS_VERSION`` names the
list: the index records the version its documents carry (table
``job_search_grams``, migration ``0012_search_grams``), and a change to the list is
a migration that rebuilds every document.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from struct import pack
from typing import Any

from .errors import BadRequest

MAX_POSITIONS = 16383  # PostgreSQL's largest tsvector position
MAX_OCCURRENCES = 256  # PostgreSQL keeps at most 256 positions per lexeme
TSVECTOR_MAX_BYTES = (1 << 20) - 1  # PostgreSQL: a tsvector's lexemes take at most this many bytes
MAX_WORD_LENGTH = 200  # longer "words" (base64 blobs, hashes) are not indexed (PostgreSQL: 2,047 bytes)
FILLER = "\u00b7"  # holds a position, never a query word (not a letter or digit)
MAX_QUERY_LENGTH = 1000
MAX_TERMS = 32

_WORD = re.compile(r"[^\W_]+")

# -- common grams (see the module docstring) -----------------------------------

GRAMS_VERSION = 1
# Starts a gram and joins its two words (``‧best‧quality``): not a letter or digit (no
# word holds it, a query cannot type it) and not ASCII (SQLite's ``ascii`` tokenizer
# keeps it inside a token). Leading, so that no gram starts with a letter or digit: a
# prefix (``fo*``, ``"red fo*"``) never matches one, nor does a prefix's expansion.
GRAM_JOINER = "\u2027"  # HYPHENATION POINT
# The words that form grams (version GRAMS_VERSION; any change is a rebuild migration).
# English function words, prompt words common in Stable Diffusion prompts, and the
# words of model and LoRA file names (extensions, versions, digits, base model names):
# pairs of them are what people type as phrases (``"best quality"``, ``juggernautXL_v9``,
# ``sd_xl_base_1.0``, ``detail_tweaker``). Node types are left out: in a document they
# stand next to each other and to numbers, pairs nobody searches for, which would cost
# bytes for nothing. 171 words: 17 grams a job on the realistic dataset (all its common
# prompt words are in), 6 on the synthetic one (benchmarks/results/search-grams-*.md).
COMMON_WORDS = frozenset(
    """
    a an the of in on at with and or by for to from into over under near behind between
    through is are it its as this that no not
    portrait photo photograph detailed masterpiece best quality high low worst normal ultra
    extremely very highly realistic photorealistic woman man girl boy cat dog fox red blue
    green golden light dark night sunset forest city street castle mountain river ocean snow
    rain fog neon cinematic lighting 8k 4k hd hdr uhd sharp focus illustration painting anime
    style artist wearing dress armor hair eyes smile standing sitting background bokeh
    beautiful cute young old face full body upper long short white black soft depth field
    natural studio professional intricate art digital concept
    sd xl sdxl base refiner pruned emaonly ema fp16 fp32 fp8 inpainting turbo lightning
    safetensors ckpt pt pth bin gguf lora detail tweaker add more details
    juggernautxl juggernaut dreamshaper realvisxl
    v1 v2 v3 v4 v5 v6 v7 v8 v9 v10 v11 v12 0 1 2 3 4 5 6 7 8 9
    """.split()
)


def grams(words: Sequence[str]) -> list[str]:
    """The grams of a document's ``words``: each adjacent pair of ``COMMON_WORDS``,
    ``GRAM_JOINER`` before each word, once, in order of first occurrence (a ``FILLER`` is no
    common word: it forms none)."""
    common = COMMON_WORDS
    found: dict[str, None] = {}
    previous = None  # the previous word if common
    for word in words:
        if word in common:
            if previous is not None:
                found[GRAM_JOINER + previous + GRAM_JOINER + word] = None
            previous = word
        else:
            previous = None
    return list(found)


def term_grams(term: Term) -> tuple[str, ...]:
    """The grams a phrase term contains (distinct, in order): one per adjacent pair of
    its whole words that are both common (a prefix at its end is no whole word)."""
    whole = term.words[:-1] if term.prefix else term.words
    common = COMMON_WORDS
    return tuple(
        dict.fromkeys(
            GRAM_JOINER + a + GRAM_JOINER + b
            for a, b in zip(whole, whole[1:], strict=False)
            if a in common and b in common
        )
    )


def gram_alone(term: Term) -> bool:
    """A phrase of exactly two common words (no prefix): its gram matches exactly the
    jobs that hold the phrase."""
    return not term.prefix and len(term.words) == 2 and bool(term_grams(term))


MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>", re.IGNORECASE)


def fold(text: str) -> str:
    """Case-folded, accents removed (NFKD, combining marks dropped)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The searchable words of ``text``, in order."""
    return _WORD.findall(fold(text))


# -- documents -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Document:
    """What a job contributes to search: its words (positions = list order, a
    ``FILLER`` holding a position that matches nothing) and, for SQL users, its node
    types, model names and LoRA names (sorted, distinct)."""

    words: tuple[str, ...]
    node_types: tuple[str, ...]
    models: tuple[str, ...]
    loras: tuple[str, ...]

    def __reduce__(self):
        # Pickled between import processes: the fields as a tuple, rebuilt by the
        # constructor (cheaper than a frozen dataclass's generic slot state).
        return Document, (self.words, self.node_types, self.models, self.loras)

    def fts_text(self, with_grams: bool = True) -> str:
        """SQLite FTS5: the words, space-separated, then its ``grams`` (positions after
        every word's)."""
        text = " ".join(self.words)
        found = grams(self.words) if with_grams else ()
        return f"{text} {' '.join(found)}" if found else text

    def tsvector_text(self, with_grams: bool = True) -> str:
        """PostgreSQL: a tsvector literal with the same words at the same positions,
        and its ``grams`` as lexemes without positions."""
        positions: dict[str, list[str]] = {}
        for position, word in enumerate(self.words, 1):
            if word != FILLER:
                positions.setdefault(word, []).append(str(position))
        text = " ".join(f"'{word}':{','.join(p)}" for word, p in positions.items())
        found = grams(self.words) if with_grams else ()
        return text + "".join(f" '{gram}'" for gram in found)

    def tsvector_binary(self, encoding: str = "utf-8", with_grams: bool = True) -> bytes:
        """PostgreSQL: the same tsvector in its binary form (what ``tsvector_send``
        writes and a binary ``COPY`` reads: the lexeme count, then each lexeme in the
        client ``encoding``, NUL-terminated, its position count and positions, as
        16-bit big-endian, weight bits 0; a gram has no positions). Lexemes in code
        point order, the server's order for UTF-8 (for another encoding the server
        sorts them)."""
        positions: dict[str, int | list[int]] = {}  # a word's position, or its positions
        for position, word in enumerate(self.words, 1):
            found = positions.get(word)
            if found is None:
                positions[word] = position
            elif isinstance(found, int):
                positions[word] = [found, position]
            else:
                found.append(position)
        positions.pop(FILLER, None)
        for gram in grams(self.words) if with_grams else ():
            positions[gram] = []  # no positions
        out = [len(positions).to_bytes(4, "big")]
        add = out.append
        for word in sorted(positions):
            add(word.encode(encoding))
            found = positions[word]
            if not isinstance(found, int):
                add(pack(f">xH{len(found)}H", len(found), *found) if found else b"\0\0\0")  # a gram: none
            elif found < len(_ONE_POSITION):
                add(_ONE_POSITION[found])
            else:
                add(pack(">xHH", 1, found))
        return b"".join(out)

    def tsvector_bytes(self) -> int:
        """The UTF-8 bytes of the tsvector's distinct lexemes, grams included
        (PostgreSQL holds at most ``TSVECTOR_MAX_BYTES``). A gram is two common words
        (a few bytes each) and the joiner, and stands for a pair of positions that
        would otherwise hold words: a document of n words still takes at most n times
        the longest word's bytes (``write_queries.LATE_SEARCH_WORDS``)."""
        lexemes = set(self.words)
        lexemes.discard(FILLER)
        return sum(len(word.encode()) for word in lexemes) + sum(len(g.encode()) for g in grams(self.words))


def fts_words(text: str) -> tuple[str, ...]:
    """The words of a ``Document.fts_text`` (its grams left out: they follow the words,
    and only a gram holds ``GRAM_JOINER``)."""
    return tuple(text.split(" " + GRAM_JOINER, 1)[0].split(" ")) if text else ()


# A lexeme's NUL, one position and the position, for the first positions (``tsvector_binary``).
_ONE_POSITION = [b"\0\0\1" + position.to_bytes(2, "big") for position in range(1024)]

_NOT_TEXT = frozenset({list, float, bool, type(None), dict})  # input values that add no text


def _graph_texts(graph: Any, texts: list[str], node_types: set, models: set, loras: set) -> None:
    if not isinstance(graph, dict):
        return
    add_text = texts.append
    for node in graph.values():
        if not isinstance(node, dict):
            continue
        class_type = node.get("class_type")
        if isinstance(class_type, str):
            add_text(class_type)
            if "\x00" not in class_type:
                node_types.add(class_type)
        meta = node.get("_meta")
        if isinstance(meta, dict):
            title = meta.get("title")
            if isinstance(title, str):
                add_text(title)
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        for key, value in inputs.items():
            kind = type(value)
            if kind in _NOT_TEXT:  # links between nodes ([node, output]), floats, flags
                continue
            if kind is str or isinstance(value, str):
                add_text(value)
                if "\x00" in value:
                    continue
                if isinstance(key, str) and "lora" in key.lower() and value:
                    loras.add(value)
                elif "." in value and value.lower().endswith(MODEL_EXTENSIONS):
                    models.add(value)
                if "<" in value:  # the only way a LoRA tag starts
                    for tag in _LORA_TAG.findall(value):
                        loras.add(tag.strip())
            elif kind is int or (isinstance(value, int) and kind is not bool):
                add_text(str(value))


def _collect(raw_kind: str, item: Any, node_types: set, models: set, loras: set) -> list[str]:
    texts: list[str] = []
    history = raw_kind == "history"
    prompt = item.get("prompt") if history and isinstance(item, dict) else item
    graph = prompt[2] if isinstance(prompt, (list, tuple)) and len(prompt) > 2 else None
    _graph_texts(graph, texts, node_types, models, loras)
    if history and isinstance(item, dict):
        _output_texts(item.get("outputs"), texts)
        _error_texts(item.get("status"), texts)
    return texts


def document(raw_kind: str, item: Any) -> Document:
    """The search document of a stored ComfyUI item (``jobs.raw`` decoded): a history
    item (``raw_kind == "history"``) or a queue item's first five elements."""
    node_types: set[str] = set()
    models: set[str] = set()
    loras: set[str] = set()
    texts = _collect(raw_kind, item, node_types, models, loras)
    return Document(_capped(texts), tuple(sorted(node_types)), tuple(sorted(models)), tuple(sorted(loras)))


def snippet(raw_kind: str, item: Any, query: SearchQuery, width: int = 100, mark: tuple[str, str] = ("[", "]")) -> str:
    """The first text of the job in which a searched word occurs, marked
    (``highlight``), cut to about ``width`` characters around the first mark; ``""``
    when the match spans texts (a phrase across two inputs)."""
    for text in _collect(raw_kind, item, set(), set(), set()):
        marked = highlight(text, query, mark)
        if marked is None:
            continue
        marked = " ".join(marked.split())
        if len(marked) <= width:
            return marked
        start = max(0, marked.index(mark[0]) - width // 3)
        cut = marked[start : start + width]
        return ("…" if start else "") + cut + ("…" if start + width < len(marked) else "")
    return ""


def _output_texts(outputs: Any, texts: list[str]) -> None:
    if not isinstance(outputs, dict):
        return
    for node_outputs in outputs.values():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for entry in items:
                if isinstance(entry, dict) and isinstance(entry.get("filename"), str):
                    texts.append(entry["filename"])
                elif isinstance(entry, str) and media_type != "text":
                    texts.append(entry)  # a 3D file name given as a string


def _error_texts(status: Any, texts: list[str]) -> None:
    messages = status.get("messages") if isinstance(status, dict) else None
    for entry in messages if isinstance(messages, list) else ():
        if (
            isinstance(entry, (list, tuple))
            and len(entry) >= 2
            and entry[0] == "execution_error"
            and isinstance(entry[1], dict)
        ):
            for key in ("exception_type", "exception_message"):
                if isinstance(entry[1].get(key), str):
                    texts.append(entry[1][key])


def _capped(texts: list[str]) -> tuple[str, ...]:
    # One fold and one scan of all texts joined by a newline: folding works character
    # by character and a newline (no letter or digit, no combining mark) ends any
    # word, so these are the words of each text in turn, as ``words`` finds them.
    found = _WORD.findall(fold("\n".join(texts)))
    del found[MAX_POSITIONS:]
    if (len(found) <= MAX_OCCURRENCES or max(Counter(found).values()) <= MAX_OCCURRENCES) and (
        not found or max(map(len, found)) <= MAX_WORD_LENGTH
    ):
        return tuple(found)  # the usual document: no word is capped
    out: list[str] = []
    seen: dict[str, int] = {}
    for word in found:
        n = seen.get(word, 0) + 1
        seen[word] = n
        out.append(word if n <= MAX_OCCURRENCES and len(word) <= MAX_WORD_LENGTH else FILLER)
    return tuple(out)


# -- queries -------------------------------------------------------------------


class SearchSyntaxError(BadRequest):
    """A malformed ``q`` (HTTP 400, ``{"error": ..., "code": "INVALID_SEARCH"}``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid search query: {reason}", code="INVALID_SEARCH")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Term:
    """A phrase of one or more words (one word is a phrase too); ``prefix``: its
    last word is a prefix; ``excluded``: jobs that match it are left out."""

    words: tuple[str, ...]
    prefix: bool = False
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    terms: tuple[Term, ...]

    @property
    def included(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if not t.excluded)

    @property
    def excluded(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.excluded)


_TOKEN = re.compile(r'\s*(-?)(?:"([^"]*)("?)|([^\s"]+))')


def _raw_terms(text: str) -> Iterator[tuple[bool, str, bool]]:
    """(excluded, body, quoted) of each term, in order."""
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            return
        match = _TOKEN.match(text, position)
        if match is None:  # a quote right after a word, e.g. fox"
            raise SearchSyntaxError(f"unexpected '\"' at position {position + 1}")
        minus, quoted, closing, bare = match.groups()
        if quoted is not None:
            if not closing:
                raise SearchSyntaxError("a quoted phrase is not closed (missing '\"')")
            yield bool(minus), quoted, True
        else:
            yield bool(minus), bare, False
        position = match.end()
        if position < len(text) and not text[position].isspace():
            raise SearchSyntaxError(f"put a space before '{text[position]}' at position {position + 1}")


def parse(text: str) -> SearchQuery:
    """Parse ``q``; raises SearchSyntaxError. Case and accents do not matter."""
    if len(text) > MAX_QUERY_LENGTH:
        raise SearchSyntaxError(f"longer than {MAX_QUERY_LENGTH} characters")
    terms = []
    for excluded, body, quoted in _raw_terms(text):
        prefix = False
        star = body.find("*")
        if star != -1:
            if star != len(body) - 1 and not (quoted and body.rstrip().endswith("*") and body.count("*") == 1):
                raise SearchSyntaxError(f"'*' may only end a word: {body!r}")
            body, prefix = body.rstrip()[:-1], True
            if quoted and body != body.rstrip():  # "red fox *": the star is no prefix of fox
                raise SearchSyntaxError(f"'*' must follow a word directly: {body!r}")
            if body and not _WORD.match(fold(body[-1])):
                raise SearchSyntaxError(f"'*' must follow a letter or digit: {body + '*'!r}")
        found = tuple(words(body))
        if not found:
            what = f'"{body}"' if quoted else body + ("*" if prefix else "")
            if excluded and not what:
                raise SearchSyntaxError("'-' must be followed by a word or a quoted phrase")
            raise SearchSyntaxError(f"no letters or digits to search for in {what!r}")
        terms.append(Term(found, prefix, excluded))
    if len(terms) > MAX_TERMS:
        raise SearchSyntaxError(f"more than {MAX_TERMS} terms")
    if not terms:
        raise SearchSyntaxError("empty query")
    if all(t.excluded for t in terms):
        raise SearchSyntaxError("every term is excluded: say what to find as well as what to leave out")
    return SearchQuery(text, tuple(terms))


def fts5_match(query: SearchQuery, expanded: Mapping[Term, Sequence[str]] | None = None, grams: bool = False) -> str:
    """The SQLite FTS5 MATCH expression of ``query`` (every word quoted).

    ``expanded``: for a prefix term of one word, the indexed words it stands for
    (``search_queries.SqliteStore.expansions``, read in the same snapshot), written as
    their OR, which matches the same documents as the prefix: FTS5 then looks each
    word up instead of merging every word starting with the prefix again for each
    query (each probe of a timeline walk). A term left out keeps its prefix form.

    ``grams``: the documents carry this code's grams (``GRAMS_VERSION``): a phrase
    with common pairs asks for their grams (``term_grams``), alone for a phrase of
    two common words, else ANDed with the phrase."""
    expanded = expanded or {}

    def phrase(term: Term) -> str:
        found = expanded.get(term)
        if found:
            return "(" + " OR ".join(f'"{word}"' for word in found) + ")"
        text = '"' + " ".join(term.words) + '"' + (" *" if term.prefix else "")
        pairs = term_grams(term) if grams and len(term.words) > 1 else ()
        if not pairs:
            return text
        if gram_alone(term):
            return f'"{pairs[0]}"'
        return "(" + " AND ".join([*(f'"{gram}"' for gram in pairs), text]) + ")"

    expr = " AND ".join(phrase(t) for t in query.included)
    if query.excluded:
        expr = f"({expr})" + "".join(f" NOT {phrase(t)}" for t in query.excluded)
    return expr


def expandable(term: Term) -> bool:
    """A prefix term of one word (``jugg*``, ``-jugg*``): it means the OR of the
    indexed words starting with it. A prefix ending a phrase (``"red fo*"``) is not:
    FTS5 has no OR inside a phrase."""
    return term.prefix and len(term.words) == 1


def tsquery(query: SearchQuery, grams: bool = False) -> str:
    """The PostgreSQL tsquery literal of ``query`` (same words, same meaning);
    ``grams`` as for ``fts5_match``."""

    def phrase(term: Term) -> str:
        last = len(term.words) - 1
        parts = [f"'{w}'" + (":*" if term.prefix and i == last else "") for i, w in enumerate(term.words)]
        text = "(" + " <-> ".join(parts) + ")"
        pairs = term_grams(term) if grams and len(term.words) > 1 else ()
        if not pairs:
            return text
        if gram_alone(term):
            return f"'{pairs[0]}'"
        return "(" + " & ".join([*(f"'{gram}'" for gram in pairs), text]) + ")"

    return " & ".join([phrase(t) for t in query.included] + [f"!{phrase(t)}" for t in query.excluded])


def matches(query: SearchQuery, doc_words: tuple[str, ...]) -> bool:
    """The reference: does a document (``Document.words``) match ``query``? The
    database answers the same (tests compare them over random histories)."""

    def found(term: Term) -> bool:
        n = len(term.words)
        for start in range(len(doc_words) - n + 1):
            window = doc_words[start : start + n]
            if window[:-1] != term.words[:-1]:
                continue
            last = window[-1]
            if last == term.words[-1] or (term.prefix and last != FILLER and last.startswith(term.words[-1])):
                return True
        return False

    return all(found(t) for t in query.included) and not any(found(t) for t in query.excluded)


def highlight(text: str, query: SearchQuery, mark: tuple[str, str] = ("[", "]")) -> str | None:
    """``text`` with each occurrence of a searched (not excluded) word marked, or None
    when no word of the query occurs in it. For showing why a job matched."""
    wanted = {w for t in query.included for w in t.words[:-1]}
    last = {(t.words[-1], t.prefix) for t in query.included}
    hits = []
    for m in _WORD.finditer(text):
        word = fold(m.group())
        if word in wanted or any(word == w or (p and word.startswith(w)) for w, p in last):
            hits.append(m.span())
    if not hits:
        return None
    out, at = [], 0
    for start, end in hits:
        out.append(text[at:start] + mark[0] + text[start:end] + mark[1])
        at = end
    return "".join(out) + text[at:]
