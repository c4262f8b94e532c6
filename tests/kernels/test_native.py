"""The native CPU kernels' build: compiled once into the cache and reused, refused with one reason."""

from __future__ import annotations

import pytest

import kernels.native as native


def needs_a_compiler():
    reason = native.unavailable_reason("s4")
    if reason is not None:
        pytest.skip(reason)


def test_a_library_is_built_once_into_the_cache_and_then_reused(tmp_path, monkeypatch):
    needs_a_compiler()
    monkeypatch.setenv("MEMRL_NATIVE_CACHE", str(tmp_path))
    first = native._build("s4")
    built_at = first.stat().st_mtime_ns
    second = native._build("s4")
    assert second == first and second.stat().st_mtime_ns == built_at
    assert [path.name for path in tmp_path.iterdir()] == [first.name]  # no half-built leftovers


def test_a_failed_build_leaves_nothing_and_gives_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMRL_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    monkeypatch.setattr(native, "_failures", {})
    assert native.library.__wrapped__("s4") is None
    assert native._failures["s4"].startswith("the native CPU kernel s4 is unavailable: `false ")
    assert list(tmp_path.iterdir()) == []


def test_memrl_native_0_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("MEMRL_NATIVE", "0")
    monkeypatch.setattr(native, "_failures", {})
    assert native.library.__wrapped__("selective_scan") is None
    assert native._failures["selective_scan"] == "MEMRL_NATIVE=0 turns the native CPU kernels off"


def test_a_changed_header_builds_a_new_library(tmp_path, monkeypatch):
    """The library's name hashes the folder's headers too: an edit to one cannot leave a stale build in use."""
    needs_a_compiler()
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("depthwise_conv.cpp", "exp_inline.h"):
        (sources / name).write_bytes((native.SOURCE_DIR / name).read_bytes())
    monkeypatch.setattr(native, "SOURCE_DIR", sources)
    monkeypatch.setenv("MEMRL_NATIVE_CACHE", str(tmp_path / "cache"))
    first = native._build("depthwise_conv")
    with (sources / "exp_inline.h").open("a") as header:
        header.write("// edited\n")
    second = native._build("depthwise_conv")
    assert second != first and first.exists() and second.exists()
