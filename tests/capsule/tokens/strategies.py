"""Hypothesis strategies for capabilities, drawn from small alphabets so that
coverage relations (equal, narrower, wider, unrelated) come up often."""

from __future__ import annotations

from hypothesis import strategies as st

from capsule.tokens import Capability, parse_capability

_features = st.sampled_from(["dictionary", "editor", "spell", "a", "ab"])
_segments = st.sampled_from(["lookup", "add", "check", "x", "changed", "a"])
_dirs = st.sampled_from(["data", "state", "words", "a", "ab"])


@st.composite
def icc_caps(draw: st.DrawFn) -> Capability:
    action = draw(st.sampled_from(["call", "publish", "subscribe"]))
    head = draw(_features)
    tail = draw(st.lists(_segments, min_size=1, max_size=2))
    name = ".".join([head, *tail])
    if draw(st.booleans()):
        name = ".".join([head, *tail[:-1], "*"])
    limits = draw(st.one_of(st.just(""), st.integers(0, 100).map(lambda n: f"?rate={n}")))
    return parse_capability(f"icc:{action}:{name}{limits}")


@st.composite
def fs_caps(draw: st.DrawFn) -> Capability:
    actions = draw(st.sampled_from(["read", "write", "read,write"]))
    parts = draw(st.lists(_dirs, min_size=0, max_size=3))
    path = "/" + "/".join(parts)
    if parts and not draw(st.booleans()):
        path += "/"
    elif not parts:
        path = "/"
    limits = draw(
        st.one_of(
            st.just(""),
            st.integers(0, 1000).map(lambda n: f"?bytes={n}"),
            st.tuples(st.integers(0, 1000), st.integers(0, 10)).map(
                lambda t: f"?bytes={t[0]}&inodes={t[1]}"
            ),
        )
    )
    return parse_capability(f"fs:{actions}:{path}{limits}")


@st.composite
def net_caps(draw: st.DrawFn) -> Capability:
    action = draw(st.sampled_from(["connect", "listen", "connect,listen"]))
    host = draw(st.sampled_from(["127.0.0.1", "localhost", "[::1]", "example.org"]))
    port = draw(st.sampled_from([80, 443, 8080]))
    return parse_capability(f"net:{action}:{host}:{port}")


capabilities = st.one_of(icc_caps(), fs_caps(), net_caps())

#: concrete targets a check may be asked about, per kind
concrete_targets = {
    "icc": st.builds(
        lambda f, s: f"{f}.{'.'.join(s)}", _features, st.lists(_segments, min_size=1, max_size=3)
    ),
    "fs": st.lists(_dirs, min_size=0, max_size=4).map(lambda p: "/" + "/".join(p)),
    "net": st.builds(
        lambda h, p: f"{h}:{p}",
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "example.org"]),
        st.sampled_from([80, 443, 8080]),
    ),
}


@st.composite
def narrower(draw: st.DrawFn, parent: Capability) -> Capability:
    """A capability derived from ``parent`` by the attenuation rules (always a subset)."""
    bits = [b for b in (1, 2, 4) if parent.actions & b]
    keep = draw(st.lists(st.sampled_from(bits), min_size=1, unique=True))
    actions = sum(keep)
    if parent.kind == "icc" and bits and parent.actions & 1:
        actions = 1  # call targets cannot be mixed with topics
    target = parent.target
    if parent.kind == "icc" and target.endswith(".*") and draw(st.booleans()):
        extra = draw(st.lists(_segments, min_size=1, max_size=2))
        target = target[:-1] + ".".join(extra) + draw(st.sampled_from(["", ".*"]))
    elif parent.kind == "fs" and target.endswith("/") and draw(st.booleans()):
        target += "/".join(draw(st.lists(_dirs, min_size=1, max_size=2)))
        target += draw(st.sampled_from(["", "/"]))
    limits = tuple((name, draw(st.integers(0, value))) for name, value in parent.limits)
    return Capability(kind=parent.kind, actions=actions, target=target, limits=limits).validate()


subset_pairs = capabilities.flatmap(lambda p: st.tuples(narrower(p), st.just(p)))
