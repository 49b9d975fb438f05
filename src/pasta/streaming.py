"""What of a running decoding's answer is final, in reading order: the part that can be streamed now.

Reading order is the main thread's text with each promise replaced by its chunk. The main thread's recognizer
only emits text once it cannot become a tag (a possible tag is held back), and emitted events are never taken
back, so main text is final as soon as it is an event. A chunk's text is final as it is emitted too, but text
after a chunk can only follow once that chunk is done. Hence the final prefix is: main text up to the first
promise, that chunk's text so far; if the chunk is done, the main text after it up to the next promise; and so on.

`final_prefix(d)` only grows as `d` advances, and equals `d.stitch()` once `d.done` (tested).
"""

from __future__ import annotations

from .decoding import Decoding, _Ignored
from .lang import ASYNC_CLOSE, Promise, Text, render


def final_prefix(decoding: Decoding, *, annotated: bool = False) -> str:
    """The final reading-order prefix: plain text, or (annotated=True) the storage form with tags."""
    out: list[str] = []
    main = decoding.threads[0]
    chunks = iter(decoding.threads[1:])
    for event in list(main.events):
        if isinstance(event, Text):
            out.append(event.text)
        elif isinstance(event, Promise):
            if annotated:
                out.append(event.raw)
            chunk = next(chunks, None)
            if chunk is None:
                if main.state == "done":  # the promise came too late to fork (request budget): no chunk ever
                    continue
                break  # forked at the next step: nothing after it is final yet
            events = list(chunk.events)
            if annotated:
                out.append(render(Text(e.raw) if isinstance(e, _Ignored) else e for e in events))
            else:
                out.extend(e.text for e in events if isinstance(e, Text))
            if chunk.state != "done":
                break
            if annotated and not chunk.closed:
                out.append(ASYNC_CLOSE)
        elif annotated:  # Sync or an ignored tag
            out.append(event.raw)
    return "".join(out)
