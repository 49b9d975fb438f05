"""Tests for pasta.lang: streaming recognizer, parse/render, structure, validator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pasta.lang import (
    ASYNC_CLOSE,
    ASYNC_OPEN,
    ISSUE_CODES,
    MAX_TAG_LEN,
    SYNC,
    AnnotatedResponse,
    AsyncClose,
    AsyncOpen,
    Chunk,
    MainText,
    PastaSyntaxError,
    Promise,
    Recognizer,
    StrayClose,
    Sync,
    SyncMark,
    Text,
    escape_attr,
    is_cut_tag,
    is_valid,
    parse,
    promise_tag,
    render,
    strip_tags,
    to_structure,
    tokens_attr_from_count,
    unescape_attr,
    validate,
)

SETTINGS = settings(max_examples=200, deadline=None)


def merged(events):
    out = []
    for e in events:
        if isinstance(e, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + e.text)
        else:
            out.append(e)
    return out


def stream(chunks):
    r = Recognizer()
    events = []
    for c in chunks:
        events += r.feed(c)
    events += r.flush()
    assert r.pending == ""
    return events


# ------------------------------------------------------------------------------ strategies

FRAGMENTS = [
    "<",
    ">",
    "/",
    "/>",
    '"',
    "'",
    "=",
    " ",
    "\n",
    "<p",
    "<prom",
    "ise",
    "<promise",
    "<promise ",
    " topic=",
    ' topic="a"',
    " topic='b c'",
    ' tokens="20"',
    " tokens=30",
    ' tokens="abc"',
    ' foo="x"',
    "&quot;",
    "&amp;",
    "<async",
    "<async>",
    "<async >",
    "</async>",
    "</async",
    "</",
    "<sync",
    "<sync/>",
    "<sync />",
    "<sy",
    "<asyncio>",
    "</sync>",
    "</sync />",
    "</promise>",
    "</syncron>",
    "a < b",
    "<promises>",
    '<promise topic="x" tokens="10"/>',
    "<promise topic='y' tokens=\"5\" />",
    '<promise topic="z">',
    "<promise/>",
    '<promise topic="' + "v" * 250,  # long candidates cross MAX_TAG_LEN
    "é€😀",
]

texty = st.text(alphabet="ab <>/=\"' \nxyz&;", max_size=8)
fragment = st.one_of(st.sampled_from(FRAGMENTS), texty, st.text(max_size=4))
mixed_text = st.lists(fragment, max_size=25).map("".join)


@st.composite
def text_and_split(draw, base=mixed_text):
    s = draw(base)
    cuts = draw(st.lists(st.integers(0, len(s)), max_size=12))
    cuts = sorted(set(cuts))
    pieces, prev = [], 0
    for c in cuts:
        pieces.append(s[prev:c])
        prev = c
    pieces.append(s[prev:])
    return s, pieces


# Valid storage-form responses built from parts, with the expected views computed independently.
safe_main = st.one_of(
    st.text(alphabet="abc xyz.,:\n-12", max_size=12),
    st.sampled_from(["a < b", "<asyncio> ", "x <= y", "5 > 3", "</div>", "<promises "]),
)
topic_st = st.text(alphabet="ab c<>\"'&\n", min_size=1, max_size=8).filter(lambda t: t.strip())
body_st = st.one_of(st.text(alphabet="abc 12.\n-", max_size=15), st.sampled_from(["a < b", "if x<y: pass"]))


@st.composite
def storage(draw):
    pieces = []  # (kind, ...) for expectations
    n_sections = draw(st.integers(0, 3))
    for _ in range(n_sections):
        pieces.append(("main", draw(safe_main)))
        n_chunks = draw(st.integers(1, 3))
        for _ in range(n_chunks):
            topic = draw(topic_st)
            tokens = draw(st.integers(1, 500))
            pieces.append(("chunk", topic, tokens, draw(body_st)))
            pieces.append(("main", draw(safe_main)))
        pieces.append(("sync",))
    pieces.append(("main", draw(safe_main)))
    store = plain = main = ""
    for p in pieces:
        if p[0] == "main":
            store += p[1]
            plain += p[1]
            main += p[1]
        elif p[0] == "chunk":
            tag = promise_tag(p[1], p[2])
            store += tag + ASYNC_OPEN + p[3] + ASYNC_CLOSE
            plain += p[3]
            main += tag
        else:
            store += SYNC
            main += SYNC
    return store, plain, main, [p for p in pieces if p[0] == "chunk"]


# ------------------------------------------------------------------------------ recognizer


@SETTINGS
@given(text_and_split())
def test_split_invariance_and_lossless(data):
    s, pieces = data
    assert "".join(pieces) == s
    events = stream(pieces)
    assert render(events) == s
    assert all(not (isinstance(e, Text) and e.text == "") for e in events)
    assert merged(events) == parse(s)
    assert render(parse(s)) == s


@SETTINGS
@given(text_and_split())
def test_char_by_char_equals_whole(data):
    s, _ = data
    assert merged(stream(list(s))) == parse(s)


@SETTINGS
@given(mixed_text)
def test_pending_is_shortest_possible_tag_prefix(s):
    r = Recognizer()
    out = render(r.feed(s))
    assert out + r.pending == s
    p = r.pending
    if p:
        # Held text starts at the only '<' and is shorter than the tag bound.
        assert p.startswith("<") and p.count("<") == 1 and len(p) < MAX_TAG_LEN
        # It could still be a tag: some completion makes the recognizer produce a tag there.
        full = ["<promise/>", "<async>", "</async>", "<sync/>"]
        suffixes = ['"/>', "'/>", "/>", ">", '="x"/>', '"x"/>', "x/>"]
        for c in [t for t in full if t.startswith(p)] + [p + x for x in suffixes]:
            evs = parse(c)
            if evs and not isinstance(evs[0], Text):
                break
        else:
            pytest.fail(f"held {p!r} but no completion turns it into a tag")


def test_streaming_examples():
    r = Recognizer()
    assert r.feed("hello <") == [Text("hello ")]
    assert r.pending == "<"
    assert r.feed("prom") == []
    assert r.pending == "<prom"
    # "<promise me" could still become <promise me="..."/>: held until it cannot.
    assert r.feed("ise me") == []
    assert r.feed(" too") == [Text("<promise me too")]
    assert r.pending == ""
    assert r.feed("<prom") == []
    assert r.feed("pt") == [Text("<prompt")]
    assert r.feed("a < b") == [Text("a < b")]
    assert r.feed("<asyncio>") == [Text("<asyncio>")]
    assert r.feed("<sy") == []
    assert r.flush() == [Text("<sy")]
    assert r.flush() == []


def test_tag_split_everywhere():
    tag = '<promise topic="a b" tokens="20"/>'
    for k in range(1, len(tag)):
        r = Recognizer()
        ev = r.feed("x" + tag[:k])
        assert ev == [Text("x")]
        ev = r.feed(tag[k:] + "y")
        assert ev == [Promise("a b", 20, tag, {"topic": "a b", "tokens": "20"}), Text("y")]


def test_long_candidate_released():
    r = Recognizer()
    s = '<promise topic="' + "a" * (MAX_TAG_LEN + 10)
    events = []
    for ch in s:
        events += r.feed(ch)
    # Released as soon as it cannot fit in MAX_TAG_LEN, without waiting for flush.
    assert len(r.pending) < MAX_TAG_LEN
    assert render(events) + r.pending == s
    assert all(isinstance(e, Text) for e in events)
    # A tag of exactly MAX_TAG_LEN characters is still a tag; one more character and it is not.
    head = '<promise topic="'
    fits = head + "a" * (MAX_TAG_LEN - len(head) - 3) + '"/>'
    assert len(fits) == MAX_TAG_LEN and isinstance(parse(fits)[0], Promise)
    too_long = head + "a" * (MAX_TAG_LEN - len(head) - 2) + '"/>'
    assert parse(too_long) == [Text(too_long)]


def test_newline_or_lt_in_value_releases_at_once():
    r = Recognizer()
    assert r.feed('<promise topic="abc\n') == [Text('<promise topic="abc\n')]
    assert r.feed('<promise topic="a<') == [Text('<promise topic="a')]
    assert r.pending == "<"


# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "raw, topic, tokens, attrs",
    [
        ('<promise topic="sleep" tokens="30"/>', "sleep", 30, {"topic": "sleep", "tokens": "30"}),
        ("<promise tokens='20' topic='a' />", "a", 20, {"topic": "a", "tokens": "20"}),
        ('<promise\n  topic = "a"\ttokens="7"\n/>', "a", 7, {"topic": "a", "tokens": "7"}),
        ('<promise topic="a"tokens="7"/>', "a", 7, {"topic": "a", "tokens": "7"}),
        ("<promise topic=a tokens=40/>", "a", 40, {"topic": "a", "tokens": "40"}),
        ('<promise topic="&quot;x&quot; &amp; &lt;y&gt; &apos;z&apos;"/>', "\"x\" & <y> 'z'", None, None),
        ('<promise topic="a>b" tokens="3">', "a>b", 3, {"topic": "a>b", "tokens": "3"}),
        ('<promise topic="a" tokens="abc"/>', "a", None, {"topic": "a", "tokens": "abc"}),
        ('<promise topic="a" tokens="-5"/>', "a", None, {"topic": "a", "tokens": "-5"}),
        ('<promise topic="a" tokens="1e9"/>', "a", None, {"topic": "a", "tokens": "1e9"}),
        ('<promise topic="a" tokens="0"/>', "a", None, {"topic": "a", "tokens": "0"}),
        ('<promise topic="a" tokens="100001"/>', "a", None, None),
        ('<promise topic="a" tokens="100000"/>', "a", 100000, None),
        ('<promise topic="a" tokens=" 12 "/>', "a", 12, None),
        ('<promise topic="  " tokens="5"/>', None, 5, None),
        ("<promise/>", None, None, {}),
        ("<promise>", None, None, {}),
        ('<promise topic="a" topic="b" x-y="1"/>', "a", None, {"topic": "a", "x-y": "1"}),
    ],
)
def test_promise_parsing(raw, topic, tokens, attrs):
    (p,) = parse(raw)
    assert isinstance(p, Promise)
    assert (p.topic, p.tokens, p.raw) == (topic, tokens, raw)
    if attrs is not None:
        assert p.attrs == attrs


@pytest.mark.parametrize(
    "s",
    [
        "<promises>",
        "<promise-x/>",
        "<promise topic/>",
        '<promise topic="a"/',
        '<promise topic="a" / >',
        "<asyncio>",
        "<async/>",
        "< async>",
        "<Async>",
        "<sync>",
        "<sync / >",
        "<synced/>",
        "</async x>",
        "</ async>",
        "</syncron>",
        "</sync/ >",
        "</promises>",
        "</ sync>",
        "a < b > c",
        '<promise topic="a',
        "<",
    ],
)
def test_not_tags(s):
    assert parse(s) == [Text(s)]
    assert strip_tags(s) == s


@pytest.mark.parametrize(
    "s, cls", [("<async>", AsyncOpen), ("<async  >", AsyncOpen), ("</async>", AsyncClose),
               ("</async\n>", AsyncClose), ("<sync/>", Sync), ("<sync />", Sync), ("</sync>", StrayClose),
               ("</sync/>", StrayClose), ("</sync >", StrayClose), ("</promise>", StrayClose)]
)
def test_simple_tags(s, cls):
    assert parse(s) == [cls(s)]


def test_promise_hashable_and_eq():
    a, b = parse('<promise topic="a"/>')[0], parse('<promise topic="a"/>')[0]
    assert a == b and hash(a) == hash(b)


@SETTINGS
@given(st.text(max_size=30))
def test_escape_roundtrip(v):
    e = escape_attr(v)
    assert unescape_attr(e) == v
    tag = promise_tag(v, 10)
    (p,) = parse(tag)
    assert isinstance(p, Promise) and p.attrs["topic"] == v and p.raw == tag


def test_unescape_leaves_unknown():
    assert unescape_attr("&copy; &#65; &#x42; &nope; &#xFFFFFFF;") == "&copy; A B &nope; &#xFFFFFFF;"


def test_promise_tag_canonical():
    assert promise_tag("sleep", 30) == '<promise topic="sleep" tokens="30"/>'
    assert promise_tag('a "b"', None) == '<promise topic="a &quot;b&quot;"/>'


def test_tokens_attr_from_count():
    assert [tokens_attr_from_count(n) for n in (0, 1, 10, 11, 20, 99, 101)] == [10, 10, 10, 20, 20, 100, 110]
    assert tokens_attr_from_count(7, multiple=5) == 10
    assert tokens_attr_from_count(3, multiple=1) == 3
    with pytest.raises(ValueError):
        tokens_attr_from_count(3, multiple=0)


# ------------------------------------------------------------------------------ structure

EXAMPLE = (
    "Tips:\n"
    '<promise topic="sleep" tokens="30"/><async>1. Sleep well.</async>\n'
    '<promise topic="food" tokens="20"/><async>2. Eat well.</async>\n'
    "<sync/>In short, rest and eat.\n"
    '<promise topic="more" tokens="10"/><async>3. Walk.</async>'
)


def test_example_structure():
    assert validate(EXAMPLE) == []
    a = to_structure(EXAMPLE, strict=True)
    assert a.to_storage() == EXAMPLE
    assert a.plain_text() == "Tips:\n1. Sleep well.\n2. Eat well.\nIn short, rest and eat.\n3. Walk."
    assert a.main_thread_text() == (
        'Tips:\n<promise topic="sleep" tokens="30"/>\n<promise topic="food" tokens="20"/>\n'
        '<sync/>In short, rest and eat.\n<promise topic="more" tokens="10"/>'
    )
    assert [(c.topic, c.tokens, c.body) for c in a.chunks] == [
        ("sleep", 30, "1. Sleep well."),
        ("food", 20, "2. Eat well."),
        ("more", 10, "3. Walk."),
    ]
    assert isinstance(a.parts[0], MainText) and isinstance(a.parts[5], SyncMark)
    # Async prefixes: main thread up to the promise; synced bodies visible, outstanding ones not.
    assert a.chunk_prefix(1) == 'Tips:\n<promise topic="sleep" tokens="30"/>\n<promise topic="food" tokens="20"/>'
    assert a.chunk_prefix(2) == EXAMPLE[: EXAMPLE.rindex("<async>")]


@SETTINGS
@given(storage())
def test_storage_views(data):
    store, plain, main, chunks = data
    assert strip_tags(store) == plain
    assert [i for i in validate(store) if i.severity == "error"] == []
    assert is_valid(store)
    a = to_structure(store, strict=True)
    assert a.to_storage() == store
    assert a.plain_text() == plain
    assert a.main_thread_text() == main
    assert [(c.topic, c.tokens, c.body) for c in a.chunks] == [(t, n, b) for _, t, n, b in chunks]


@SETTINGS
@given(text_and_split())
def test_structure_lossless_on_any_text(data):
    s, _ = data
    a = to_structure(s)
    assert a.to_storage() == s
    assert a.plain_text() == strip_tags(s)
    for iss in validate(s):
        assert iss.code in ISSUE_CODES
        assert iss.severity == ISSUE_CODES[iss.code][0]
        assert 0 <= iss.offset <= len(s)
        assert iss.line == s.count("\n", 0, iss.offset) + 1
        assert iss.column == iss.offset - (s.rfind("\n", 0, iss.offset) + 1) + 1
        assert iss.message.startswith(f"line {iss.line}, column {iss.column}: ")


def test_non_strict_malformed_structure():
    s = 'a</async><promise topic="t" tokens="10"/>b<async>x<sync/>y</async><async>tail'
    a = to_structure(s)
    assert a.to_storage() == s
    c0, c1, c2 = a.chunks
    assert not c0.has_body and c0.topic == "t"
    assert c1.promise_raw == "" and c1.body == "x<sync/>y"
    assert c2.close_raw == "" and c2.body == "tail"
    with pytest.raises(PastaSyntaxError) as ei:
        to_structure(s, strict=True)
    assert ei.value.issue.code == "stray-async-close"
    assert "line 1, column 2: </async> with no open <async>" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_strict_ignores_warnings():
    s = '<promise topic="a"/><async>x</async><sync/><sync/>'
    codes = [i.code for i in validate(s)]
    assert codes == ["missing-tokens", "sync-nothing-outstanding"]
    assert is_valid(s)
    assert isinstance(to_structure(s, strict=True), AnnotatedResponse)


# ------------------------------------------------------------------------------ validator

P = '<promise topic="t" tokens="10"/>'


@pytest.mark.parametrize(
    "text, code, line, column",
    [
        ("ok\nab </async>", "stray-async-close", 2, 4),
        (f"x\n  {P}\n<async>b</async>", "async-without-promise", 3, 1),
        ("<async>b</async>", "async-without-promise", 1, 1),
        (f"x {P}", "promise-without-body", 1, 3),
        (f"{P} <async>b</async>", "promise-without-body", 1, 1),
        (f"{P}{P}<async>b</async>", "promise-without-body", 1, 1),
        (f"{P}<sync/>", "promise-without-body", 1, 1),
        (f"{P}<async>a\n  {P}</async>", "nested-promise", 2, 3),
        (f"{P}<async>a<async>b</async>", "nested-async", 1, len(P) + 9),
        (f"{P}<async>a\nb<sync/></async>", "sync-in-async", 2, 2),
        (f"x\n{P}<async>abc", "unclosed-async", 2, len(P) + 1),
        ('<promise tokens="10"/><async>b</async>', "missing-topic", 1, 1),
        ('<promise topic="" tokens="10"/><async>b</async>', "empty-topic", 1, 1),
        ('<promise topic=" " tokens="10"/><async>b</async>', "empty-topic", 1, 1),
        ('<promise topic="a" tokens="abc"/><async>b</async>', "bad-tokens", 1, 1),
        ('<promise topic="a" tokens="1e9"/><async>b</async>', "bad-tokens", 1, 1),
        ('<promise topic="a" tokens="-5"/><async>b</async>', "bad-tokens", 1, 1),
        ('<promise topic="a" tokens="0"/><async>b</async>', "tokens-out-of-range", 1, 1),
        ('<promise topic="a" tokens="100001"/><async>b</async>', "tokens-out-of-range", 1, 1),
        ("a\n\nb <sync> c", "malformed-tag", 3, 3),
        ("x <async/> y", "malformed-tag", 1, 3),
        ('hi <promise topic="a" tokens=/>', "malformed-tag", 1, 4),
        ('<promise topic="a"/><async>b</async>', "missing-tokens", 1, 1),
        ('<promise topic="a" tokens="10" kind="x"/><async>b</async>', "unknown-attr", 1, 1),
        ('<promise topic="a" topic="b" tokens="10"/><async>b</async>', "duplicate-attr", 1, 1),
        ('<promise topic="a" tokens="10"><async>b</async>', "promise-not-self-closed", 1, 1),
        ("x\nyy<sync/>", "sync-nothing-outstanding", 2, 3),
        (f"{P}<async>b</async><sync/><sync/>", "sync-nothing-outstanding", 1, len(P) + 24),
    ],
)
def test_validator_codes(text, code, line, column):
    issues = validate(text)
    hits = [i for i in issues if i.code == code]
    assert hits, issues
    i = hits[0]
    assert (i.line, i.column) == (line, column), i
    assert i.severity == ISSUE_CODES[code][0]
    assert i.message.startswith(f"line {line}, column {column}: ")
    assert is_valid(text) == all(x.severity != "error" for x in issues)
    if i.severity == "warning":
        assert is_valid(text)
    else:
        assert not is_valid(text)


def test_validator_exact_issue_lists():
    assert validate("plain text, a < b, <asyncio>") == []
    assert [i.code for i in validate(f"{P}<async>a</async>\n{P}<async>b</async><sync/>end")] == []
    assert [i.code for i in validate("</async><async>")] == [
        "stray-async-close",
        "async-without-promise",
        "unclosed-async",
    ]
    (i,) = validate("ab\ncd</async>")
    assert str(i) == "error [stray-async-close] line 2, column 3: </async> with no open <async>"


def test_chunk_dataclass_defaults():
    c = Chunk("t", 10, "b", P)
    assert c.to_storage() == P + "<async>b</async>" and c.has_body


def test_counted_topics():
    from pasta import lang

    assert lang.counted_topic("Exercise", 2, 3) == "2/3 Exercise"
    assert lang.topic_count("2/3 Exercise") == (2, 3) and lang.topic_count(" 12 / 12  x") == (12, 12)
    assert lang.topic_count("Exercise") is None and lang.topic_count("2/3") is None  # a count needs a topic
    assert lang.topic_count("24/7 support") == (24, 7)  # read as a count (the overrun guard needs a finished list)
    # The count is not part of what a topic is about: the same subject under two counts repeats a topic.
    assert lang.topic_key("1/3 Diet") == lang.topic_key("2/3 diet!") == lang.topic_key("Diet") == "diet"
    assert lang.topic_key("2/3") == "2 3"  # nothing after the count: the count is all there is
    with pytest.raises(ValueError, match="1 <= index <= total"):
        lang.counted_topic("x", 4, 3)


def test_a_stray_closing_tag_is_markup_that_means_nothing():
    # "</sync>" is no Pasta-Lang tag, but a model writes it: read as text, a user would see it.
    text = 'A<promise topic="x" tokens="5"/><async>b</sync/></async><sync/>Again.</sync>'
    assert strip_tags(text) == "AbAgain."
    issues = validate(text)
    assert [i.code for i in issues] == ["stray-close", "stray-close"] and not is_valid(text)
    assert (issues[0].line, issues[0].column) == (1, text.index("</sync/>") + 1)
    structure = to_structure(text)
    assert structure.to_storage() == text  # lossless, like every other malformed input
    assert structure.chunks[0].body == "b</sync/>" and structure.plain_text() == "AbAgain."


def test_terminated_outlines_end_each_item_with_a_semicolon():
    from pasta.lang import has_terminated_outline, last_outline, terminated_outlines

    text = "Intro. Dr. Who said so.\n\nOverview: Dr. Who; St. Ives.\n\n1. Done.\nOverview: A.  \nend."
    assert terminated_outlines(text) == "Intro. Dr. Who said so.\n\nOverview: Dr. Who; St. Ives;\n\n1. Done.\n" \
                                        "Overview: A;  \nend."
    # Both forms name the same items; only the terminated one is recognised as such.
    for form in (text, terminated_outlines(text)):
        assert last_outline(form.split("\n1.")[0] + "\n")[0] == ["Dr. Who", "St. Ives"]
    assert has_terminated_outline(terminated_outlines(text)) and not has_terminated_outline(text)
    assert terminated_outlines("Overview: A; B\nno dot") == "Overview: A; B\nno dot"  # nothing to end


def test_outline_lines_keep_items_as_written_and_the_end_mark_ends_the_last():
    from pasta.lang import outline_lines

    text = "Intro.\nOverview: Diet;; Sleep.\nOverview: A; B;\nNote: x; y.\nOverview: Walk  "
    assert outline_lines(text) == [["Diet", "", " Sleep"], ["A", " B"], ["Walk"]]


@pytest.mark.parametrize("text, cut", [
    ('intro <promise topic="a', True), ("x <sync", True), ("x </asyn", True), ("x <prom", True), ("<async", True),
    ("x <sy", False), ("x <p", False), ("see </a", False), ("x <", False), ("x <pro", False),
])
def test_a_stream_that_ends_inside_a_named_tag_is_cut_markup(text, cut):
    """What the recognizer holds at the end: a tag cut short (dropped by the decoders) or text that may be content."""
    recognizer = Recognizer()
    recognizer.feed(text)
    held = recognizer.pending
    assert held and is_cut_tag(held) is cut
