"""Redaction of direct identifiers from CV text before it is embedded or counted for features.

Structured protected attributes never reach the features (they are not part of `Candidate`), but
a CV's free text often carries them anyway: a name line, an e-mail address, a phone number, a
photo or profile URL, a date of birth, "Nationality: ...". `redact` removes the common forms so
they cannot become BM25 terms, term counts or part of the embedded text. It is a best-effort
pattern pass, not a guarantee: a bare name on the first line, or proxies such as graduation years
or club memberships, stay (the model card says so).

Hand-written regular expressions rather than an NER library (Presidio, spaCy): those need models
that are not installed and cost milliseconds per CV, while these patterns cover the labelled and
formatted identifiers an ATS export typically holds in microseconds.
"""

from __future__ import annotations

import re

# A line that *labels* personal data: "Name: ...", "Date of birth: ...", "Nationality - ...".
# The whole line goes: the label says what the value is, whatever its format. A few common
# non-English labels are included because ATS exports from European CVs carry them. Contact
# labels ("Mobile:", "E-mail:") are not: "Mobile: Swift, Kotlin" is a skills line, and the
# e-mail, phone and URL patterns below remove the values themselves.
_LABELS = (
    r"(?:full\s+|first\s+|last\s+|family\s+|given\s+)?name|surname|nom|nombre|vorname|nachname",
    r"date\s+of\s+birth|birth\s*date|birthday|d\.?\s?o\.?\s?b\.?|born|geburtsdatum|geboren"
    r"|date\s+de\s+naissance|n[ée]e?\s+le|fecha\s+de\s+nacimiento",
    r"age|gender|sex|marital\s+status|family\s+status|familienstand|nationality|citizenship"
    r"|staatsangeh[öo]rigkeit|nationalit[ée]|religion|ethnicity|race|disability",
    r"(?:home\s+)?address|adresse|anschrift|photo|headshot|foto",
)
_LABEL_LINE = re.compile(
    # A colon, or a dash or bar between spaces: "Age-related research" is not a label.
    r"^[ \t]*(?:" + "|".join(_LABELS) + r")(?:[ \t]*:|[ \t]+[-–|][ \t])[^\n]*(?:\n|$)",
    re.IGNORECASE | re.MULTILINE,
)

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Scheme or www URLs, and bare "domain.tld/path" links (linkedin.com/in/jane, a photo link);
# the TLD list keeps skill pairs such as "Node.js/Express" in.
_TLDS = (
    "com|org|net|io|me|info|dev|app|co|uk|de|fr|nl|es|it|ch|at|be|eu|us|ca|au|ie|se|no|dk|fi|pl"
    "|pt|br|jp|cn|in"
)
_URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)\S+|\b(?:[\w-]+\.)+(?:" + _TLDS + r")/\S*", re.IGNORECASE
)
# Whether a bare link could be there: a pattern starting with a literal lets `re` skip ahead,
# ~10x cheaper than running `_URL` over a CV that has none.
_BARE_URL_HINT = re.compile(r"\.(?:" + _TLDS + r")/", re.IGNORECASE)
# A phone number: an optional +/00 country prefix, then digit groups split by single spaces,
# dots, dashes, slashes or parentheses. Nine or more digits (or a + prefix and seven or more)
# keep year ranges ("2015-2019", 8 digits) and dates ("12.03.2021") out. It starts at a digit, "+"
# or "(" (no lookbehind: `_drop_phone` checks the character before, which is ~4x faster).
_PHONE = re.compile(r"[+(]*\d(?:[ .\-/()]{0,2}\d){6,16}\b")
_DATE = (
    r"(?:\d{1,4}[./-]\d{1,2}[./-]\d{1,4}"  # 1985-03-02, 02/03/1985, 2.3.85
    r"|\d{1,2}(?:st|nd|rd|th)?\.?\s+[^\W\d_]+\.?,?\s+\d{4}"  # 2 March 1985, 2. März 1985
    r"|[^\W\d_]+\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}"  # March 2, 1985
    r"|(?:in\s+)?\d{4})"  # born in 1985
)
# Dates of birth written inline ("born on 2 March 1985 in Lyon").
_BIRTH = re.compile(
    r"\b(?:born(?:\s+on|\s+in)?|date\s+of\s+birth|d\.o\.b\.?|dob|geboren(?:\s+am)?)\s*:?\s*"
    + _DATE,
    re.IGNORECASE,
)
_BIRTH_HINTS = ("born", "birth", "dob", "d.o.b", "geboren")
# Ages written inline ("aged 39", "39 years old").
_AGE = re.compile(r"\baged?\s*:?\s*\d{1,2}\b|\b\d{1,2}\s*(?:years?|yrs?)[\s-]old\b", re.IGNORECASE)
_AGE_HINTS = ("aged", " age ", " age:", "(age", "\nage", " old", "-old")


def _drop_phone(m: re.Match[str]) -> str:
    found = m.group()
    before = m.string[m.start() - 1] if m.start() else " "
    if before.isalnum() or before in "_+":
        return found  # the tail of a longer token (an id, a version), not a number of its own
    digits = sum(ch.isdigit() for ch in found)
    prefixed = found.lstrip("(").startswith(("+", "00"))
    return " " if digits >= 9 or (prefixed and digits >= 7) else found


def redact(text: str) -> str:
    """`text` without labelled personal-data lines, e-mails, URLs, phone numbers, birth dates.

    Each pattern runs only when a cheap substring test says it could match: most CVs have no
    e-mail, URL or birth date, and this runs for every CV at ingest and at service start.
    """
    text = _LABEL_LINE.sub("", text)
    if "@" in text:
        text = _EMAIL.sub(" ", text)
    low = text.lower()
    if "://" in text or "www." in low or _BARE_URL_HINT.search(text):
        text = _URL.sub(" ", text)
    if any(h in low for h in _BIRTH_HINTS):
        text = _BIRTH.sub(" ", text)
    if any(h in low for h in _AGE_HINTS):
        text = _AGE.sub(" ", text)
    return _PHONE.sub(_drop_phone, text)
