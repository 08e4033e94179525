"""bench.quality.llm_share's report compares what a reader of docs/llm_share.md relies on: every
model with the student, and each pretrained teacher (and the student distilled from it) with each
of its controls that was run on every seed, as pretrained - control."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def llm_share(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `bench` is a package at the repository root
    return importlib.import_module("bench.quality.llm_share")


def test_each_pretrained_model_is_reported_against_each_control_that_ran(llm_share):
    names = [
        "distilled_randomdrop",
        "distilled_textdrop",
        "student",
        "teacher_deepdrop",
        "teacher_notext",
        "teacher_randomdrop",
        "teacher_textdrop",
    ]
    pairs = llm_share.report_pairs(names)
    assert pairs[:6] == [(n, "student") for n in names if n != "student"]
    assert pairs[6:] == [
        ("teacher_textdrop", "teacher_randomdrop"),
        ("teacher_textdrop", "teacher_notext"),
        ("teacher_textdrop", "teacher_deepdrop"),
        ("distilled_textdrop", "distilled_randomdrop"),
    ]


def test_a_control_without_its_pretrained_model_is_only_compared_with_the_student(llm_share):
    pairs = llm_share.report_pairs(["student", "teacher_notext", "teacher_random"])
    assert pairs == [("teacher_notext", "student"), ("teacher_random", "student")]


def test_every_control_is_a_variant_the_harness_can_train(llm_share):
    for pretrained, controls in llm_share.CONTROLS.items():
        assert {pretrained, *controls} <= set(llm_share.VARIANTS)
