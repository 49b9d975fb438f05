"""The rule-based annotator: valid Pasta-Lang, text preserved exactly, conservative about what it marks."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pasta import lang
from pasta.data.annotate_structural import (
    StructuralConfig,
    _insert_tags,
    annotate_structural,
    annotate_structural_examples,
    topic_from_text,
)
from pasta.data.finalize import approx_token_count, has_pasta_tags
from pasta.data.sources import Example

LONG = "each item has plenty of words so that it is clearly worth its own thread"


def check(text: str, **kw) -> lang.AnnotatedResponse:
    out = annotate_structural(text, **kw)
    assert lang.strip_tags(out) == text
    assert lang.is_valid(out), lang.validate(out)
    if not has_pasta_tags(text):  # the rules alone must be sound, not just the safety net behind them
        raw = _insert_tags(text, kw.get("count_tokens") or approx_token_count, kw.get("config", StructuralConfig()))
        assert raw == out
    return lang.to_structure(out, strict=True)


V1 = StructuralConfig.v1()


def test_numbered_list_with_intro_and_outro():
    text = (f"Here are some tips:\n\n1. Sleep: {LONG}.\n2. Food: {LONG}.\n3. Exercise: {LONG}.\n\n"
            "Overall, these habits add up.")
    out = annotate_structural(text, config=V1)
    s = check(text, config=V1)
    assert [c.topic for c in s.chunks] == ["Sleep", "Food", "Exercise"]
    assert [c.body for c in s.chunks] == [f"1. Sleep: {LONG}.", f"2. Food: {LONG}.", f"3. Exercise: {LONG}."]
    assert out.startswith("Here are some tips:\n\n<promise ")
    assert out.endswith("</async>\n\n<sync/>Overall, these habits add up.")
    for c in s.chunks:
        assert c.tokens is not None and c.tokens % 10 == 0 and c.tokens >= len(c.body.split())


def test_tokens_come_from_the_given_counter():
    text = f"- {LONG}\n- {LONG} and more"
    s = check(text, count_tokens=lambda body: 123, config=V1)
    assert [c.tokens for c in s.chunks] == [130, 130]
    s = check(text, count_tokens=len, config=StructuralConfig.v1(tokens_multiple=5))
    assert [c.tokens for c in s.chunks] == [-(-len(c.body) // 5) * 5 for c in s.chunks]


def test_nested_lines_and_loose_items_stay_with_their_item():
    text = (f"* First {LONG}:\n  - nested a\n  - nested b\n\n  continued paragraph of the first item\n\n"
            f"* Second {LONG}\n  lazy continuation line\n")
    s = check(text)
    assert len(s.chunks) == 2
    assert "nested b" in s.chunks[0].body and "continued paragraph" in s.chunks[0].body
    assert s.chunks[1].body.endswith("lazy continuation line")


def test_sections_and_conclusion_after_sync():
    text = (f"# Title\n\nIntro.\n\n## Cats\n\nCats {LONG}.\n\n## Dogs\n\nDogs {LONG}.\n\n"
            "## Conclusion\n\nBoth are fine.\n")
    s = check(text)
    assert [c.topic for c in s.chunks] == ["Cats", "Dogs"]
    assert lang.to_structure(annotate_structural(text)).parts[-1].text == "## Conclusion\n\nBoth are fine.\n"


def test_unstructured_and_small_structures_are_left_alone():
    cases = [
        "Paris is the capital of France.",
        "",
        "- a\n- b\n- c",  # items too short
        f"1. {LONG}",  # one item is not parallelism
        f"1. Open the file {LONG}.\n2. Then close it {LONG}.",  # sequential steps
        f"- {LONG}\n- short one",  # one short item: the whole list stays sequential
        f"```python\n# {LONG}\nx = 1\n# {LONG}\n```\n",  # headings inside code are not headings
        f"```\n- {LONG}\n- {LONG}\n```",  # nor lists
        f"Text with a tag <sync/> in it.\n\n- {LONG}\n- {LONG}",  # cannot be annotated losslessly
    ]
    for text in cases:
        assert annotate_structural(text) == text, text


def test_v2_keeps_list_markers_in_the_main_thread():
    text = f"Here are some tips:\n\n1. **Sleep**: {LONG}.\n2. **Food**: {LONG}.\n\nOverall, these habits add up."
    s = check(text)
    assert [c.topic for c in s.chunks] == ["Sleep", "Food"]
    assert [c.body for c in s.chunks] == [f"**Sleep**: {LONG}.", f"**Food**: {LONG}."]
    main = s.main_thread_text()
    assert "1. <promise" in main and "\n2. <promise" in main and main.count("<sync/>") == 1


def test_v2_groups_long_lists_into_at_most_max_chunks():
    items = [f"{i}. Topic{i}: {LONG}." for i in range(1, 11)]
    text = "Ten ideas:\n" + "\n".join(items) + "\nThat is all."
    s = check(text)
    assert len(s.chunks) == 5  # 10 items, at most 6 chunks: pairs
    assert s.chunks[0].topic == "Topic1; Topic2"
    assert s.chunks[0].body == f"Topic1: {LONG}.\n2. Topic2: {LONG}."
    assert len(check(text, config=StructuralConfig(max_chunks=3)).chunks) == 3  # groups of 4, 4, 2
    too_many = "\n".join(f"{i}. Topic{i}: {LONG}." for i in range(1, 21))
    assert not check(too_many).chunks  # more than max_items: left alone
    assert len(check(too_many, config=V1).chunks) == 20


def test_v2_topics_are_distinct_or_the_list_is_left_alone():
    same = f"- Sleep well: {LONG}.\n- Sleep well: {LONG} again."
    assert not check(same).chunks
    assert [c.topic for c in check(same, config=V1).chunks] == ["Sleep well", "Sleep well"]
    # Equal short topics become distinct with more words.
    longer = "- Exercise: walk one hour a day in the park\n- Exercise: swim twice a week at the local pool"
    topics = [c.topic for c in check(longer).chunks]
    assert len(set(topics)) == 2 and all(t.startswith("Exercise") for t in topics)


def test_topic_from_text():
    assert topic_from_text("1. **Stay hydrated.** Drink water.") == "Stay hydrated"
    assert topic_from_text("## Effects on cities\nbody") == "Effects on cities"
    assert topic_from_text("- Exercise regularly, aiming for 150 minutes") == "Exercise regularly"
    assert len(topic_from_text("- " + LONG).split()) == 6


_word = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
_item = st.lists(_word, min_size=1, max_size=14).map(" ".join)
_marker = st.sampled_from(["-", "*", "+", "1.", "2)", "10."])
_gap = st.sampled_from(["\n", "\n\n", "\n  \n"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intro=st.sampled_from(["", "Intro line:\n", "Some intro.\n\n"]),
       items=st.lists(st.tuples(_marker, _item, st.booleans()), min_size=0, max_size=6),
       gap=_gap, outro=st.sampled_from(["", "\n", "\n\nOutro text.", "\nlazy tail"]))
def test_lists_are_always_valid_and_text_preserving(intro, items, gap, outro):
    lines = []
    for marker, body, nested in items:
        lines.append(f"{marker} {body}" + (f"\n   - sub {body}" if nested else ""))
    text = intro + gap.join(lines) + outro
    s = check(text, config=V1)
    # Words the rules count per item: the body, a nested line ("sub" + body), a number marker, a lazy tail.
    words = [len(b.split()) * (2 if nested else 1) + nested + marker[0].isdigit() for marker, b, nested in items]
    if words and outro == "\nlazy tail":
        words[-1] += 2
    if len(items) >= 2 and min(words) >= 8:
        assert len(s.chunks) == len(items)  # every item of a qualifying list is a chunk
        assert sum(isinstance(p, lang.SyncMark) for p in s.parts) == 1
    else:
        assert not s.chunks


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(list("ab #-*1.\n\t`<>/") + ["word ", "```\n", "## ", "\n- ", "\n1. ", "  ",
                                                               "one two three four five six seven eight "]),
                max_size=80).map("".join))
def test_arbitrary_markdownish_text_is_never_changed(text):
    check(text)


def test_file_pipeline_writes_rows_and_resumes(tmp_path):
    examples = [Example("s:1", "p", f"Tips:\n- Sleep: {LONG}\n- Food: {LONG}", "s"), Example("s:2", "p", "Plain.", "s"),
                Example("s:3", "p", "has <async> text", "s")]
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    stats = annotate_structural_examples(examples, out, rej, progress=False)
    assert (stats.accepted, stats.annotated, stats.rejected) == (2, 1, 1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s:1", "s:2"]
    assert rows[0]["annotator"] == "structural" and lang.strip_tags(rows[0]["annotated"]) == rows[0]["response"]
    assert json.loads(rej.read_text())["reason"] == "source_has_tags"
    again = annotate_structural_examples(examples, out, rej, progress=False)
    assert again.skipped_done == 3 and again.accepted == 0
    assert len(out.read_text().splitlines()) == 2


def test_v3_groups_items_into_chunks_worth_a_thread():
    from pasta.data.annotate_structural import _group

    assert _group([25] * 6, 2) == [3, 3] and _group([10, 50, 10, 10, 10, 10], 2) == [2, 4]
    assert _group([5, 5, 5, 100], 2) == [3, 1] and _group([1, 1], 2) == [1, 1]
    items = [f"{i}. **Animal{i}**: {LONG}." for i in range(1, 7)]  # ~22 approximate tokens each
    text = "Animals:\n" + "\n".join(items) + "\n\nThat is all."
    s = check(text, config=StructuralConfig.v3(target_chunk_tokens=70))
    assert len(s.chunks) == 2  # 6 items of ~17 tokens: two chunks of three
    assert s.chunks[0].topic == "Animal1; Animal2; Animal3"
    assert s.chunks[1].body.startswith("**Animal4**") and s.chunks[1].body.endswith(f"6. **Animal6**: {LONG}.")
    short = "- Sleep: one two three four five six seven eight\n- Food: one two three four five six seven eight"
    assert not check(short, config=StructuralConfig.v3()).chunks  # two short items: not worth two threads
    assert check(short).chunks  # version 2 forks them


def test_v4_counts_topics_per_group_and_keeps_the_text():
    text = f"Tips:\n\n1. **Sleep**: {LONG}.\n2. **Food**: {LONG}.\n3. **Walk**: {LONG}.\n\nOverall, good."
    s = check(text, config=StructuralConfig.v4())
    assert [c.topic for c in s.chunks] == ["1/3 Sleep", "2/3 Food", "3/3 Walk"]
    assert [lang.topic_count(c.topic) for c in s.chunks] == [(1, 3), (2, 3), (3, 3)]
    # Sections are counted like list items.
    two = f"## A\n{LONG}\n\n## B\n{LONG}"
    assert [c.topic for c in check(two, config=StructuralConfig.v4()).chunks] == ["1/2 A", "2/2 B"]
    # Counting is orthogonal to the other rules: version 3's grouping counts the grouped chunks.
    items = [f"{i}. **Animal{i}**: {LONG}." for i in range(1, 7)]
    grouped = check("Animals:\n" + "\n".join(items), config=StructuralConfig.v3(target_chunk_tokens=70,
                                                                                counted_topics=True))
    assert [c.topic for c in grouped.chunks] == ["1/2 Animal1; Animal2; Animal3", "2/2 Animal4; Animal5; Animal6"]
    assert [c.topic for c in check(text).chunks] == ["Sleep", "Food", "Walk"]  # version 2 counts nothing


def test_v5_outline_names_each_group_before_its_first_chunk_and_adds_nothing_else():
    from pasta.lang import OUTLINE_PREFIX, last_outline, outline_line

    text = (f"Tips:\n\n1. **Sleep**: {LONG}.\n2. **Food**: {LONG}.\n3. **Walk**: {LONG}.\n\nOverall, good.")
    out = annotate_structural(text, config=StructuralConfig.v5())
    assert lang.is_valid(out), lang.validate(out)
    plain = lang.strip_tags(out)
    # Exactly one line added, right before the list's first item; the rest of the answer is untouched.
    assert plain == text.replace("1. **Sleep**", "Overview: Sleep; Food; Walk.\n\n1. **Sleep**", 1)
    s = lang.to_structure(out, strict=True)
    assert [c.topic for c in s.chunks] == ["1/3 Sleep", "2/3 Food", "3/3 Walk"]
    # Every promise topic, without its count, is written in the outline the main thread has in view.
    outline = next(line for line in plain.splitlines() if line.startswith(OUTLINE_PREFIX))
    assert all(c.topic.split(" ", 1)[1] in outline for c in s.chunks)
    assert out.index(outline) < out.index("<promise")
    assert last_outline(plain) == (["Sleep", "Food", "Walk"], plain.index("Walk.\n") + len("Walk.\n"))
    # Grouped chunks: the outline names chunks (a grouped topic keeps its "; "), sections get one too.
    items = [f"{i}. **Animal{i}**: {LONG}." for i in range(1, 7)]
    grouped = annotate_structural("Animals:\n" + "\n".join(items),
                                  config=StructuralConfig.v5(target_chunk_tokens=70, grouped_topic_words=3))
    assert lang.strip_tags(grouped).startswith(
        "Animals:\n" + outline_line(["Animal1; Animal2; Animal3", "Animal4; Animal5; Animal6"]) + "1. **Animal1**")
    two = annotate_structural(f"## A\n{LONG}\n\n## B\n{LONG}", config=StructuralConfig.v5())
    assert two.startswith("Overview: A; B.\n\n<promise topic=\"1/2 A\"")
    # Nothing to fork: no outline, the text comes back as it was.
    assert annotate_structural("Just a sentence.", config=StructuralConfig.v5()) == "Just a sentence."


def test_v5_rows_store_the_outlined_answer_as_the_response(tmp_path):
    examples = [Example("s:1", "p", f"Tips:\n- Sleep: {LONG}\n- Food: {LONG}", "s"), Example("s:2", "p", "Plain.", "s")]
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    stats = annotate_structural_examples(examples, out, rej, config=StructuralConfig.v5(), progress=False)
    assert (stats.accepted, stats.annotated) == (2, 1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["response"] == f"Tips:\nOverview: Sleep; Food.\n\n- Sleep: {LONG}\n- Food: {LONG}"
    assert all(lang.strip_tags(r["annotated"]) == r["response"] for r in rows)
    assert rows[1]["response"] == "Plain."
