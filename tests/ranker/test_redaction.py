"""Redaction of direct identifiers from CV text: what goes, and what must stay for the features."""

from __future__ import annotations

import pytest

from ranker.redaction import redact


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Name: Jane Doe\nNurse", "Jane Doe"),
        ("  Full name - Jane Doe\nNurse", "Jane Doe"),
        ("Date of birth: 1985-03-02\nNurse", "1985"),
        ("DOB: 02/03/1985\nNurse", "1985"),
        ("Geburtsdatum: 2. März 1985\nPflege", "März"),
        ("Gender: female\nNurse", "female"),
        ("Nationality | French\nNurse", "French"),
        ("Marital status: married\nNurse", "married"),
        ("Photo: portrait.jpg\nNurse", "portrait"),
        ("Address: 12 Baker Street, London\nNurse", "Baker"),
        ("Contact jane.doe+cv@mail.example.co.uk today", "jane.doe"),
        ("See https://example.com/me?x=1 for more", "example.com"),
        ("Profile: linkedin.com/in/jane-doe-123", "jane-doe"),
        ("www.janedoe.dev", "janedoe"),
        ("Call +44 20 7946 0958", "7946"),
        ("Call (020) 7946-0958", "7946"),
        ("Tel 0049 30 1234567", "1234567"),
        ("Mobile 015112345678", "015112345678"),
        ("I was born on 2 March 1985 in Lyon", "1985"),
        ("born in 1985, raised in Lyon", "1985"),
        ("Born March 2, 1985", "1985"),
        ("Aged 39, I ...", "39"),
        ("I am 39 years old", "39"),
    ],
)
def test_identifiers_are_removed(text: str, gone: str) -> None:
    assert gone not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "Registered Nurse, City Hospital (Jan 2019 - Present)",
        "Data Engineer 2015-2019, then 2019 - 2021",
        "Released v2 on 12.03.2021 to 1,250,000 users",
        "Mobile: Swift, Kotlin and React Native",
        "Node.js/Express, C++, C#, ASP.NET and CI/CD",
        "Age-related macular degeneration research",
        "Managed 12 people and a budget of 300000 EUR",
        "Name-brand retail experience; renamed the product line",
        "Race engineering at a Formula 3 team",
    ],
)
def test_work_history_and_skills_stay(text: str) -> None:
    assert redact(text) == text


def test_only_the_labelled_line_goes() -> None:
    cv = "Name: Jane Doe\nSenior Data Engineer\nPython, SQL\n"
    assert redact(cv) == "Senior Data Engineer\nPython, SQL\n"
