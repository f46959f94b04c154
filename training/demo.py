"""A deterministic demo ATS export: candidates with long CVs, postings, and hiring outcomes.

The outcomes come from a hidden hiring process of three stages, seen by different people:

- **Screening** (label 1). A screener reads the CV: `w_skill` x the share of required skills the CV
  *claims* (listed under SKILLS or used in a work bullet, held or not) + 0.5 x the same share of
  nice-to-haves + the experience and location terms + N(0, 0.5). About `screen_rate` of the
  applicants pass, through a soft threshold (a logistic of width 0.35 around the score that lets
  that share through).
- **Interview** (label 2). The hiring manager finds out the truth: 1.3 x `w_skill` x the mean
  *depth* (0.3-1, 0 when not held) of the required skills, 0.6 x that of the nice-to-haves, -1.5
  when the posting's hidden must-have skill is not held, +0.4 for the posting's own job family,
  + `w_talent` x talent (a standard-normal quality no field records), + the experience and
  location terms + N(0, 0.6). About `interview_rate` of those screened go on.
- **Offer and hire** (labels 3 and 4). Up to two offers, in order of the manager's view + talent
  once more + N(0, 0.5), to finalists above the applicants' 70th percentile; 80% accept; one
  posting in ten closes without a hire whoever applied.

Experience term: -`w_exp` per year short of the minimum (at most 4 years counted), -0.08 per year
beyond 10 over it. Location term: `w_loc` x (-1.5 on site elsewhere and not relocating, -0.4
relocating, -0.6 remote posting but on-site candidate). Each posting draws its own recruiter:
`w_skill` 1.5-3.5, `w_exp` 0.2-1.0, `w_loc` 0.3-1.5, `w_talent` 0.4-1.2, a must-have skill in half
the postings, `screen_rate` 0.30-0.55, `interview_rate` 0.20-0.45.

What a reader of this file could exploit, and what features must NOT be shaped around (they
would fit this generator, not hiring):

- Listed skills are a noisy copy of the truth: a quarter of real skills are left off the SKILLS
  list (the work bullets may still use them), one CV in five lists one or two skills never held,
  career changers list bootcamp skills. Work bullets name skills in proportion to depth squared,
  so how often a required skill recurs in "- Designed ... with {skill}" lines tracks depth;
  passing mentions ("Attended an introductory workshop on X", "Worked alongside the ... team,
  who relied on X and Y") and bootcamp lines are traps. Parsing the bullet templates would read
  depth far more cleanly than any real CV allows.
- Talent shows only in four achievement bullets ("Promoted ahead of schedule ...", "Recognised
  with the company's annual excellence award.", "Chosen to lead the team's most critical project
  ...", "Asked by leadership to set up and run ..."), present in a job with probability
  0.5 x sigmoid(1.5 x talent - 0.5). Matching these phrases would read a latent no real CV states
  so neatly.
- Experience is a slope per missing year, not a step at the minimum; location is exactly the
  structured fields; the job family shows in titles and the fixed `FAMILIES` vocabulary.
- The per-posting recruiter weights, the must-have skill, talent and the noise are not
  observable: they are what no ranker can learn, by design.
- Career breaks, part-time jobs and graduation years have no effect unless a `Bias` is set.

Measured on the default set's 150 held-out postings (README, "The demo data"), each posting's
applicants ranked: one feature alone reaches NDCG@10 0.52 at best (`bm25`; `required_coverage`
0.50, `dense_cosine` 0.47), a hand-weighted sum of coverage, location, minimum years and cosine
0.61, the trained model 0.67 (+0.059 [+0.031, +0.088] over the rule, paired): the process is
mostly additive in the obvious fields, so compare models with such a rule, not only with single
features.

Protected attributes (sex, age band, race/ethnicity in the EEOC / LL144 categories, unknown for
~6%) go to a separate table; the hiring process never reads them. CV traits follow them as in
life: a career break shows on half of women's CVs (with 3+ years of experience) and 8% of men's,
a part-time current job on 30% and 7%, and the graduation year tells the age. Unbiased, these
traits change nothing; `Bias` makes the process penalise one of them, which lands on the category
that shows it most (a disparate impact through a proxy, as audits meet it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np

from ranker.datafiles import write_jsonl
from ranker.domain import Candidate, Outcome, Posting, Stage, to_plain
from ranker.errors import InvalidInput

T = TypeVar("T")

DEMO_FILES = ("candidates.jsonl", "postings.jsonl", "outcomes.jsonl", "protected.jsonl")
START = datetime(2024, 1, 1, tzinfo=UTC)
"""First posting date; postings spread over `SPAN_DAYS` after it (fixed, so output is stable)."""
SPAN_DAYS = 640

CITIES = (
    "London",
    "Manchester",
    "Berlin",
    "Amsterdam",
    "Dublin",
    "Paris",
    "Madrid",
    "Lisbon",
    "Warsaw",
    "Stockholm",
)


@dataclass(frozen=True)
class Family:
    """A job family: its titles, skills, employers, work bullets and education."""

    name: str
    domain: str
    titles: tuple[str, ...]
    skills: tuple[str, ...]
    """Ordered from most to least common."""
    team: str
    employers: tuple[str, ...]
    bullets: tuple[str, ...]
    """Templates: {s} and {t} are skills the candidate has, {n} a number."""
    degrees: tuple[str, ...]
    adjacent: tuple[str, ...]


FAMILIES: tuple[Family, ...] = (
    Family(
        "software",
        "software engineering and building reliable backend and web systems",
        (
            "Software Engineer",
            "Backend Developer",
            "Full Stack Developer",
            "Frontend Developer",
            "DevOps Engineer",
        ),
        (
            "python",
            "java",
            "javascript",
            "sql",
            "git",
            "docker",
            "aws",
            "typescript",
            "react",
            "kubernetes",
            "postgresql",
            "rest apis",
            "microservices",
            "ci/cd",
            "node.js",
            "go",
            "terraform",
            "linux",
        ),
        "engineering",
        (
            "Northwind Software",
            "Bluepeak Labs",
            "Cobalt Systems",
            "Hexagon Cloud",
            "Tidewater Tech",
        ),
        (
            "Designed and built {s} services handling {n} thousand requests per minute, with {t} for deployment.",
            "Migrated a legacy monolith to {s} and {t}, cutting release time from weeks to days.",
            "Wrote automated tests and code reviews in {s}, raising coverage to {n} percent.",
            "Built internal tools with {s} that the support team used daily to resolve incidents faster.",
            "Improved the performance of the main {s} application by profiling hot paths and caching with {t}.",
            "Owned on-call for {n} production services and wrote the runbooks for them.",
        ),
        ("BSc Computer Science", "MEng Software Engineering", "BSc Mathematics"),
        ("data", "support"),
    ),
    Family(
        "data",
        "data analysis, statistics and machine learning for business decisions",
        (
            "Data Scientist",
            "Data Analyst",
            "Data Engineer",
            "Machine Learning Engineer",
            "Analytics Engineer",
        ),
        (
            "python",
            "sql",
            "statistics",
            "machine learning",
            "pandas",
            "excel",
            "tableau",
            "spark",
            "airflow",
            "power bi",
            "scikit-learn",
            "a/b testing",
            "dbt",
            "deep learning",
            "etl",
            "r",
            "data visualization",
        ),
        "data",
        (
            "Quantix Analytics",
            "Meridian Data",
            "Lumen Insights",
            "Parallax AI",
            "Driftwood Metrics",
        ),
        (
            "Built {s} models to predict customer churn, lifting retention by {n} percent.",
            "Designed {s} pipelines that load {n} million rows a day, orchestrated with {t}.",
            "Ran {s} experiments with product managers and reported results with {t} dashboards.",
            "Cleaned and joined messy sources with {s} and {t} to build a single customer view.",
            "Presented {s} findings to leadership that changed pricing for {n} product lines.",
            "Automated weekly reporting in {s}, saving analysts {n} hours a week.",
        ),
        ("MSc Statistics", "BSc Economics", "MSc Data Science", "BSc Physics"),
        ("software", "finance", "marketing"),
    ),
    Family(
        "sales",
        "B2B sales, building pipeline and closing deals",
        (
            "Account Executive",
            "Sales Representative",
            "Business Development Manager",
            "Sales Manager",
            "Key Account Manager",
        ),
        (
            "negotiation",
            "crm",
            "salesforce",
            "b2b sales",
            "lead generation",
            "account management",
            "cold calling",
            "pipeline management",
            "forecasting",
            "presentations",
            "hubspot",
            "saas sales",
            "contract negotiation",
        ),
        "sales",
        (
            "Apex Solutions",
            "Brightline Group",
            "Summit Partners",
            "Vantage Trading",
            "Crestview Media",
        ),
        (
            "Closed {n} new accounts in a year using {s} and disciplined {t}.",
            "Exceeded quota by {n} percent through {s} in a new territory.",
            "Managed a pipeline of {n} opportunities in {s} and kept forecasts within five percent.",
            "Ran {s} for enterprise clients and renewed every key contract.",
            "Trained {n} new representatives on {s} and {t}.",
            "Built partnerships with distributors through {s}, opening a new revenue stream.",
        ),
        ("BA Business Administration", "BA Marketing", "BA Economics"),
        ("marketing", "support"),
    ),
    Family(
        "nursing",
        "patient care in hospital and community settings",
        ("Registered Nurse", "Staff Nurse", "ICU Nurse", "Nurse Practitioner", "Charge Nurse"),
        (
            "patient care",
            "medication administration",
            "patient assessment",
            "infection control",
            "bls",
            "wound care",
            "electronic health records",
            "iv therapy",
            "triage",
            "acls",
            "critical care",
            "care planning",
            "pediatrics",
        ),
        "clinical",
        (
            "St Mary's Hospital",
            "City General Hospital",
            "Riverside Clinic",
            "Northgate Health Trust",
            "Hillcrest Care Home",
        ),
        (
            "Provided {s} for up to {n} patients per shift on a busy surgical ward.",
            "Performed {s} and {t} following hospital protocols and documented every step.",
            "Led {s} audits that reduced ward infections by {n} percent.",
            "Coordinated {s} with doctors, families and social workers for complex discharges.",
            "Mentored {n} student nurses in {s} and safe practice.",
            "Responded to emergencies using {s} and {t} and handed over clearly to the next shift.",
        ),
        ("BSc Nursing", "Diploma in Adult Nursing", "MSc Advanced Nursing Practice"),
        ("support",),
    ),
    Family(
        "finance",
        "financial planning, reporting and accounting",
        ("Financial Analyst", "Accountant", "FP&A Analyst", "Finance Manager", "Auditor"),
        (
            "excel",
            "financial modeling",
            "budgeting",
            "forecasting",
            "reconciliation",
            "variance analysis",
            "ifrs",
            "sap",
            "accounts payable",
            "audit",
            "gaap",
            "tax",
            "valuation",
            "power bi",
            "sql",
        ),
        "finance",
        (
            "Sterling Capital",
            "Ironbridge Finance",
            "Harbor & Co",
            "Goldfield Group",
            "Oakleaf Accounting",
        ),
        (
            "Built {s} for a budget of {n} million and presented scenarios to the CFO.",
            "Owned month-end close including {s} and {t} for {n} entities.",
            "Reduced reporting time by {n} percent by automating {s} in {t}.",
            "Led {s} reviews that found savings across {n} cost centres.",
            "Prepared statutory accounts under {s} and supported external auditors.",
            "Partnered with department heads on {s} and quarterly forecasts.",
        ),
        ("BSc Accounting", "BA Finance", "ACCA qualification", "MSc Finance"),
        ("data", "logistics"),
    ),
    Family(
        "logistics",
        "supply chain, warehousing and transport operations",
        (
            "Logistics Coordinator",
            "Supply Chain Analyst",
            "Warehouse Manager",
            "Procurement Specialist",
            "Operations Planner",
        ),
        (
            "supply chain management",
            "inventory management",
            "logistics",
            "excel",
            "procurement",
            "sap",
            "warehouse management",
            "demand planning",
            "vendor management",
            "transport planning",
            "lean",
            "erp",
            "six sigma",
            "forklift operation",
        ),
        "operations",
        (
            "Swift Freight",
            "Continental Logistics",
            "Harbourline Shipping",
            "Keystone Supply",
            "Delta Distribution",
        ),
        (
            "Ran {s} for a warehouse shipping {n} thousand orders a week.",
            "Cut stock-outs by {n} percent through better {s} and {t}.",
            "Negotiated with {n} carriers as part of {s}, lowering freight costs.",
            "Introduced {s} practices on the warehouse floor and trained the team in {t}.",
            "Planned routes and schedules with {s} for a fleet of {n} vehicles.",
            "Maintained supplier scorecards and led {s} for critical parts.",
        ),
        ("BSc Supply Chain Management", "BA Business", "Diploma in Logistics"),
        ("finance",),
    ),
    Family(
        "marketing",
        "digital marketing, content and growth",
        (
            "Marketing Manager",
            "Digital Marketing Specialist",
            "Content Marketer",
            "SEO Specialist",
            "Growth Marketer",
        ),
        (
            "seo",
            "content strategy",
            "social media",
            "google analytics",
            "email marketing",
            "copywriting",
            "sem",
            "ppc",
            "hubspot",
            "marketing automation",
            "brand management",
            "a/b testing",
            "crm",
        ),
        "marketing",
        ("Brightwave Agency", "Pixel & Pine", "Foxglove Media", "Northstar Brands", "Echo Digital"),
        (
            "Grew organic traffic by {n} percent through {s} and {t}.",
            "Planned and ran {s} campaigns with a budget of {n} thousand a quarter.",
            "Wrote and edited content for {s}, reaching {n} thousand subscribers.",
            "Set up {s} and reported funnel metrics with {t} to leadership.",
            "Ran {s} on landing pages, raising conversion by {n} percent.",
            "Managed the brand calendar and {s} across {n} channels.",
        ),
        ("BA Marketing", "BA Communications", "BA English"),
        ("sales", "data"),
    ),
    Family(
        "support",
        "customer support and customer success",
        (
            "Customer Support Specialist",
            "Customer Success Manager",
            "Support Engineer",
            "Service Desk Analyst",
        ),
        (
            "customer service",
            "communication",
            "zendesk",
            "troubleshooting",
            "ticketing",
            "crm",
            "onboarding",
            "sla management",
            "escalation handling",
            "salesforce",
            "itil",
            "knowledge base",
        ),
        "support",
        ("HelpHub", "Clearpath Services", "Beacon Support", "Orbit Telecom", "Kindred Retail"),
        (
            "Resolved around {n} tickets a week in {s} with a satisfaction score above 95 percent.",
            "Handled {s} for enterprise customers and kept response times within the SLA.",
            "Wrote {n} knowledge base articles on {s} that reduced repeat tickets.",
            "Led {s} for new customers and cut time to first value by {n} days.",
            "Diagnosed customer issues through {s} and worked with engineers on fixes.",
            "Trained {n} new agents in {s} and {t}.",
        ),
        ("BA Psychology", "BA Business", "Diploma in IT Support"),
        ("sales", "software", "nursing"),
    ),
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}

# Shared across families on purpose: near-duplicate phrasing that says nothing about fit.
GENERIC_BULLETS = (
    "Collaborated with cross-functional teams to deliver projects on time and within budget.",
    "Mentored new team members and documented processes so knowledge was not lost.",
    "Reduced turnaround time by {n} percent by streamlining the team's workflows.",
    "Presented monthly updates to senior stakeholders and acted on their feedback.",
    "Took part in hiring and onboarding for a team that grew from {n} to {m} people.",
    "Championed a culture of continuous improvement and clear communication.",
)
# A skill mentioned without being held: the trap for lexical and dense matching.
PASSING_MENTIONS = (
    "Worked alongside the {team} team, who relied on {x} and {y}.",
    "Attended an introductory workshop on {x}.",
    "Partnered with colleagues in {team} on a project that used {x}.",
    "Followed the company's move to {x} from the sidelines and shared the newsletter.",
)
SUMMARY_FLUFF = (
    "Known for a calm, structured approach and strong communication.",
    "Passionate about learning, teamwork and delivering results.",
    "Enjoys solving hard problems with people from different backgrounds.",
    "Detail-oriented, reliable and comfortable with changing priorities.",
)
UNIVERSITIES = (
    "University of Leeds",
    "Trinity College Dublin",
    "TU Berlin",
    "University of Amsterdam",
    "Complutense University of Madrid",
    "University of Warsaw",
    "KTH Stockholm",
    "University of Manchester",
)
LANGUAGES = ("English", "Spanish", "German", "French", "Polish", "Portuguese", "Dutch", "Swedish")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# Accomplishments a strong candidate's CV mentions more often: the one visible trace of talent.
ACHIEVEMENT_BULLETS = (
    "Promoted ahead of schedule after {n} months in the role.",
    "Recognised with the company's annual excellence award.",
    "Chosen to lead the team's most critical project of the year.",
    "Asked by leadership to set up and run the new {team} practice.",
)
CAREER_BREAK_REASONS = (
    "caring for family",
    "parental leave and family care",
    "caring for a relative",
    "family commitments",
)

RACE_ETHNICITY: tuple[tuple[str, float], ...] = (
    ("White", 0.60),
    ("Hispanic or Latino", 0.17),
    ("Black or African American", 0.12),
    ("Asian", 0.07),
    ("Two or more races", 0.025),
    ("American Indian or Alaska Native", 0.01),
    ("Native Hawaiian or Pacific Islander", 0.005),
)
"""EEOC / NYC LL144 race/ethnicity categories and their shares among those who self-identify."""
RACE_UNKNOWN = 0.06
"""Share who decline to self-identify: no `race_ethnicity` in their protected record."""

CAREER_BREAK_RATE = {"female": 0.50, "male": 0.08, "non-binary": 0.20}
"""Share of each sex whose CV shows a career break (of those with 3+ years of experience)."""
PART_TIME_RATE = {"female": 0.30, "male": 0.07, "non-binary": 0.15}
"""Share of each sex whose current job is part-time."""
EARLY_GRADUATE_YEAR = 2003
"""The `graduation_year` proxy: a degree dated this year or earlier (a proxy of age)."""
PROXIES = ("career_break", "part_time", "graduation_year")
"""CV traits a biased historical process can penalise (`Bias.proxy`)."""


@dataclass(frozen=True)
class Bias:
    """A historical hiring process biased against a category through a proxy visible in the CV.

    The process never reads the protected attribute: it multiplies the probability of passing
    screening and, separately, interview by `1 - strength` for every candidate whose CV shows
    `proxy`. The proxy is much more common in the target category (`CAREER_BREAK_RATE`,
    `PART_TIME_RATE`; `graduation_year` follows age), so the category's pass-through rates fall.
    """

    attribute: str
    """Protected attribute naming the target category: sex, age_band or race_ethnicity."""
    value: str
    """The target category, e.g. female."""
    proxy: str = "career_break"
    strength: float = 0.5
    """0 leaves the process unbiased; 1 stops every proxy holder at screening."""

    def __post_init__(self) -> None:
        if self.proxy not in PROXIES:
            raise InvalidInput(
                f"unknown bias proxy {self.proxy!r}; use one of {', '.join(PROXIES)}"
            )
        if not 0.0 <= self.strength <= 1.0:
            raise InvalidInput(f"bias strength must be within 0..1, got {self.strength}")

    @classmethod
    def parse(cls, spec: str, proxy: str = "career_break", strength: float = 0.5) -> Bias:
        """A bias from `ATTRIBUTE=CATEGORY` (e.g. `sex=female`), the proxy and the strength."""
        attribute, sep, value = spec.partition("=")
        if not sep or not attribute.strip() or not value.strip():
            raise InvalidInput(
                f"bias target {spec!r} is not ATTRIBUTE=CATEGORY; e.g. --bias sex=female"
            )
        return cls(attribute.strip(), value.strip(), proxy, strength)

    def describe(self) -> str:
        return f"{self.attribute}={self.value} through {self.proxy} at strength {self.strength:g}"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and shape of the demo set.

    The default size keeps `make run` to a few minutes on 2 cores: ingestion encodes every CV
    (~500 words, ~4 encoder windows each, so ~8,000 window encodes) and each short posting once,
    training takes under a minute. 1,000 postings leave 150 in the held-out test split (the newest
    15%): with 63 (420 postings) the paired interval of the model against a hand-weighted rule
    still held zero, so the set could not tell them apart; ~700 training postings also give the
    model more to learn from.
    """

    candidates: int = 2000
    postings: int = 1000
    applicants: tuple[int, int] = (20, 60)
    """Applicants per posting, drawn uniformly from this range (inclusive)."""
    seed: int = 7
    short_cvs: bool = False
    """One or two jobs and few bullets (tests): ~100-200 words instead of ~300-800."""
    bias: Bias | None = None
    """A biased historical process (`Bias`); None: unbiased. Only outcomes change with it."""


@dataclass
class DemoData:
    """A generated demo set: domain records plus the protected table kept apart."""

    candidates: list[Candidate]
    postings: list[Posting]
    outcomes: list[Outcome]
    protected: dict[str, dict[str, str]]
    family_of: dict[str, str] = field(default_factory=dict)
    """Hidden job family of every candidate and posting id (for tests and analysis only)."""
    proxies: dict[str, frozenset[str]] = field(default_factory=dict)
    """The `PROXIES` each candidate's CV shows (for tests and analysis only)."""


@dataclass
class _Person:
    family: Family
    depth: dict[str, float]
    """Skills the candidate really has -> how deep (0.3..1): what the hiring manager finds out."""
    years: float
    city: str
    relocate: bool
    remote_ok: bool
    target: Family | None
    """A career changer's target family: their CV talks it up; they do not have its skills."""
    talent: float
    """Standard-normal quality no structured field records; interviews and offers reward it."""
    age: float
    """Years spent studying late, travelling, changing careers or out of work make it more than
    22 + `years`."""
    career_break: bool = False
    part_time: bool = False
    claimed: frozenset[str] = frozenset()
    """Skills the CV claims (listed or used in a work bullet): what the screener reads."""
    proxies: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Recruiter:
    """How one posting's hiring team weighs evidence: it differs from posting to posting."""

    skill_weight: float
    experience_weight: float
    location_weight: float
    must_have: str | None
    """A required skill without which the hiring manager rarely goes on (None: no such skill)."""
    screen_rate: float
    interview_rate: float
    talent_weight: float


class _Gen:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, seq: Sequence[T]) -> T:
        return seq[int(self.rng.integers(len(seq)))]

    def sample(self, seq: Sequence[T], k: int, weights: np.ndarray | None = None) -> list[T]:
        k = min(k, len(seq))
        idx = self.rng.choice(len(seq), size=k, replace=False, p=weights)
        return [seq[int(i)] for i in idx]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def skill_weights(self, n: int) -> np.ndarray:
        # Zipf-like: the first skills of a family are the common ones.
        w = 1.0 / np.arange(1, n + 1) ** 0.7
        return np.asarray(w / w.sum())


def _seniority(years: float) -> str:
    if years < 2.5:
        return "Junior "
    if years < 6:
        return ""
    if years < 12:
        return "Senior "
    return "Lead "


def _min_years(prefix: str) -> float:
    return {"Junior ": 0.0, "": 2.0, "Senior ": 5.0, "Lead ": 8.0}[prefix]


def _make_person(g: _Gen) -> _Person:
    fam = g.pick(FAMILIES)
    years = float(np.round(min(35.0, g.rng.gamma(2.0, 3.5)), 1))
    n_skills = int(g.rng.integers(5, 10))
    skills = g.sample(fam.skills, n_skills, g.skill_weights(len(fam.skills)))
    if g.chance(0.35):
        adj = FAMILY_BY_NAME[g.pick(fam.adjacent)]
        extra = [s for s in g.sample(adj.skills, 2) if s not in skills]
        skills += extra
    # Depth grows with experience but varies by skill: a listed skill can be shallow.
    depth = {
        s: float(np.clip(g.rng.uniform(0.3, 1.0) + 0.02 * min(years, 10.0), 0.3, 1.0))
        for s in skills
    }
    target = None
    if g.chance(0.12):
        target = FAMILY_BY_NAME[g.pick(fam.adjacent)]
    return _Person(
        family=fam,
        depth=depth,
        years=years,
        city=g.pick(CITIES),
        relocate=g.chance(0.3),
        remote_ok=g.chance(0.55),
        target=target,
        talent=float(g.rng.normal()),
        age=22.0 + years + min(30.0, float(g.rng.exponential(5.0))),
    )


def _protected(g: _Gen, age: float) -> dict[str, str]:
    sex = "female" if g.chance(0.49) else "male" if g.chance(0.97) else "non-binary"
    band = "18-29" if age < 30 else "30-44" if age < 45 else "45-59" if age < 60 else "60+"
    out = {"sex": sex, "age_band": band}
    u = float(g.rng.random())
    if u >= RACE_UNKNOWN:
        shares = np.cumsum([share for _, share in RACE_ETHNICITY])
        at = (u - RACE_UNKNOWN) / (1.0 - RACE_UNKNOWN) * shares[-1]
        out["race_ethnicity"] = RACE_ETHNICITY[int(np.searchsorted(shares, at, side="right"))][0]
    return out


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _cv(g: _Gen, person: _Person, title: str, short: bool) -> tuple[str, list[str]]:
    """The CV text, and the structured skills list the ATS parsed from it.

    Sets `person.claimed` (skills the CV claims) and the `graduation_year` proxy on `person`.
    """
    fam = person.family
    skills = list(person.depth)
    # Self-reported skills are incomplete (real ones left out, though the work bullets may still
    # show them) and sometimes inflated (skills listed but never used).
    listed = [s for s in skills if not g.chance(0.25)] or skills[:1]
    if person.target is not None:
        course = g.sample(person.target.skills[:8], 3)
        listed += [s for s in course[:2] if s not in listed]
    elif g.chance(0.2):
        for fake in g.sample(fam.skills, int(g.rng.integers(1, 3))):
            if fake not in listed:
                listed.append(fake)
    # Bullets talk most about the skills the candidate knows best.
    weights = np.array([person.depth[s] ** 2 for s in skills])
    weights /= weights.sum()
    used: set[str] = set()

    lines: list[str] = [
        title,
        f"{person.city} | {'open to remote work' if person.remote_ok else 'on-site'}",
    ]
    top = g.sample(skills, min(3, len(skills)), weights)
    summary = (
        f"{title} with {person.years:g} years of experience in {fam.domain}. "
        f"Skilled in {', '.join(top[:-1])} and {top[-1]}. {g.pick(SUMMARY_FLUFF)}"
    )
    if person.target is not None:
        summary += (
            f" Now moving into {person.target.domain}; completed a bootcamp covering "
            f"{', '.join(course)} and eager to apply them as a {g.pick(person.target.titles)}."
        )
    lines += ["", "SUMMARY", summary, "", "EXPERIENCE"]

    n_jobs = int(g.rng.integers(1, 3)) if short else int(np.clip(2 + person.years // 3, 3, 6))
    end_year, end_month = 2025, int(g.rng.integers(1, 12))
    remaining = max(person.years, 0.5)
    base = title.removeprefix(_seniority(person.years))
    p_achievement = 0.5 * _sigmoid(1.5 * person.talent - 0.5)
    for j in range(n_jobs):
        span = remaining / (n_jobs - j) if j < n_jobs - 1 else remaining
        months = max(3, int(span * 12))
        start_year, start_month = divmod(end_year * 12 + end_month - months, 12)
        # Earlier jobs carry the seniority of the experience the candidate had back then.
        job_base = base if j == 0 or g.chance(0.6) else g.pick(fam.titles)
        job_title = _seniority(remaining) + job_base
        if j == 0 and person.part_time:
            job_title += " (part-time)"
        end = "Present" if j == 0 else f"{MONTHS[end_month - 1]} {end_year}"
        lines += [
            "",
            f"{job_title}, {g.pick(fam.employers)} ({MONTHS[start_month]} {start_year} - {end})",
        ]
        if not short:
            lines.append(
                f"Part of a {fam.team} team of {int(g.rng.integers(3, 40))} people at a company of "
                f"{int(g.rng.integers(50, 5000))}, working on {fam.domain}."
            )
        n_bullets = int(g.rng.integers(2, 4)) if short else int(g.rng.integers(4, 7))
        templates = g.sample(fam.bullets, min(n_bullets, len(fam.bullets)))
        for t in templates:
            if len(skills) > 1:
                s, t2 = g.sample(skills, 2, weights)
            else:
                s = t2 = skills[0]
            used.update((s, t2) if "{t}" in t else (s,))
            lines.append(
                "- "
                + t.format(s=s, t=t2, n=int(g.rng.integers(3, 60)), m=int(g.rng.integers(20, 90)))
            )
        if g.chance(p_achievement):
            lines.append(
                "- "
                + g.pick(ACHIEVEMENT_BULLETS).format(n=int(g.rng.integers(6, 20)), team=fam.team)
            )
        if g.chance(0.6):
            lines.append(
                "- "
                + g.pick(GENERIC_BULLETS).format(
                    n=int(g.rng.integers(5, 40)), m=int(g.rng.integers(40, 90))
                )
            )
        if g.chance(0.45):
            other = g.pick([f for f in FAMILIES if f is not fam])
            x, y = g.sample(other.skills[:10], 2)
            lines.append("- " + g.pick(PASSING_MENTIONS).format(team=other.team, x=x, y=y))
        remaining -= span
        end_year, end_month = start_year, start_month + 1
        if j == 0 and person.career_break:
            # The break sits between the current job and the one before it.
            gap = int(g.rng.integers(6, 25))
            b_year, b_month = divmod(end_year * 12 + end_month - gap, 12)
            lines += [
                "",
                f"Career break ({MONTHS[b_month]} {b_year} - {MONTHS[end_month - 1]} {end_year}): "
                f"{g.pick(CAREER_BREAK_REASONS)}.",
            ]
            end_year, end_month = b_year, b_month + 1

    lines += ["", "SKILLS", ", ".join(listed), "", "EDUCATION"]
    # A first degree at 21-23: the graduation year tells the age.
    grad_year = 2025 - int(person.age) + int(g.rng.integers(21, 24))
    lines.append(f"{g.pick(fam.degrees)}, {g.pick(UNIVERSITIES)} ({grad_year})")
    if person.target is not None:
        lines.append(
            f"Bootcamp certificate in {person.target.domain} ({2025 - int(g.rng.integers(0, 2))})"
        )
    if not short:
        langs = g.sample(LANGUAGES, 2)
        lines += ["", "LANGUAGES", f"{langs[0]} (native), {langs[1]} (professional working)"]
    person.claimed = frozenset(listed) | frozenset(used)
    person.proxies = frozenset(
        name
        for name, shown in (
            ("career_break", person.career_break),
            ("part_time", person.part_time),
            ("graduation_year", grad_year <= EARLY_GRADUATE_YEAR),
        )
        if shown
    )
    return "\n".join(lines), listed


def _posting(g: _Gen, pid: str, created: datetime) -> tuple[Posting, Family, _Recruiter]:
    fam = g.pick(FAMILIES)
    prefix = g.pick(("Junior ", "", "", "Senior ", "Senior ", "Lead "))
    base = g.pick(fam.titles)
    req = g.sample(fam.skills, int(g.rng.integers(3, 6)), g.skill_weights(len(fam.skills)))
    nice = g.sample([s for s in fam.skills if s not in req], int(g.rng.integers(1, 4)))
    remote = g.chance(0.25)
    city = "" if remote else g.pick(CITIES)
    min_years = _min_years(prefix) + float(g.rng.integers(0, 2))
    where = "fully remote" if remote else f"based in our {city} office"
    desc = (
        f"We are hiring a {prefix}{base} to join our {fam.team} team, {where}. "
        f"You will work on {fam.domain}, with real ownership from day one. "
        f"You bring at least {min_years:g} years of relevant experience and hands-on "
        f"{', '.join(req[:-1])} and {req[-1]}"
        + (f"; {' and '.join(nice)} would be a plus." if nice else ".")
        + " "
        + g.pick(GENERIC_BULLETS).format(n=10, m=30).replace("Collaborated", "You will collaborate")
        + " We offer flexible hours, learning budget and a friendly team."
    )
    recruiter = _Recruiter(
        skill_weight=float(g.rng.uniform(1.5, 3.5)),
        experience_weight=float(g.rng.uniform(0.2, 1.0)),
        location_weight=float(g.rng.uniform(0.3, 1.5)),
        must_have=g.pick(req) if g.chance(0.5) else None,
        screen_rate=float(g.rng.uniform(0.3, 0.55)),
        interview_rate=float(g.rng.uniform(0.2, 0.45)),
        talent_weight=float(g.rng.uniform(0.4, 1.2)),
    )
    return (
        Posting(
            id=pid,
            title=f"{prefix}{base}",
            description=desc,
            required_skills=tuple(req),
            nice_skills=tuple(nice),
            min_years=min_years,
            location=city,
            remote=remote,
            created_at=created,
        ),
        fam,
        recruiter,
    )


def _common_fit(p: Posting, r: _Recruiter, person: _Person) -> float:
    """What screener and hiring manager agree on: experience against the minimum, location."""
    short = max(0.0, p.min_years - person.years)
    over = max(0.0, person.years - p.min_years - 10.0)
    exp = -r.experience_weight * min(short, 4.0) - 0.08 * over
    if p.remote:
        loc = 0.0 if person.remote_ok else -0.6
    elif person.city == p.location:
        loc = 0.0
    else:
        loc = -0.4 if person.relocate else -1.5
    return exp + r.location_weight * loc


def _screen_view(p: Posting, r: _Recruiter, person: _Person) -> float:
    """The screener reads the CV: claimed skills (listed or used in a bullet), years, location."""
    req = sum(s in person.claimed for s in p.required_skills) / max(1, len(p.required_skills))
    nice = sum(s in person.claimed for s in p.nice_skills) / max(1, len(p.nice_skills))
    return r.skill_weight * req + 0.5 * nice + _common_fit(p, r, person)


def _manager_view(p: Posting, fam: Family, r: _Recruiter, person: _Person) -> float:
    """The hiring manager finds out the truth: skill depth, the must-have, talent, the domain."""
    depth = person.depth
    req = sum(depth.get(s, 0.0) for s in p.required_skills) / max(1, len(p.required_skills))
    nice = sum(depth.get(s, 0.0) for s in p.nice_skills) / max(1, len(p.nice_skills))
    must = -1.5 if r.must_have is not None and r.must_have not in depth else 0.0
    same = 0.4 if person.family is fam else 0.0
    return (
        1.3 * r.skill_weight * req
        + 0.6 * nice
        + must
        + same
        + r.talent_weight * person.talent
        + _common_fit(p, r, person)
    )


def _pass(
    g: _Gen, score: np.ndarray, among: np.ndarray, rate: float, penalty: np.ndarray
) -> np.ndarray:
    """Who passes a stage: soft threshold at the score that lets about `rate` of `among` through.

    Every applicant draws one uniform whether or not they compete, so the random stream (and so
    every other record) is the same with and without a bias.
    """
    u = g.rng.random(len(score))
    if not among.any():
        return np.zeros(len(score), dtype=bool)
    bar = float(np.quantile(score[among], 1.0 - rate))
    prob = 1.0 / (1.0 + np.exp(-(score - bar) / 0.35))
    return among & (u < prob * penalty)


def _outcomes(
    g: _Gen,
    p: Posting,
    fam: Family,
    r: _Recruiter,
    applicants: list[tuple[str, _Person]],
    bias: Bias | None,
) -> list[Outcome]:
    assert p.created_at is not None
    if not applicants:
        # Tiny configs can leave a posting with no applicants; np.quantile fails on empty input.
        return []
    n = len(applicants)
    people = [person for _, person in applicants]
    penalty = np.ones(n)
    if bias is not None:
        penalty = np.array(
            [1.0 - bias.strength if bias.proxy in q.proxies else 1.0 for q in people]
        )
    screen = np.array([_screen_view(p, r, q) for q in people]) + g.rng.normal(0, 0.5, n)
    truth = np.array([_manager_view(p, fam, r, q) for q in people])
    everyone = np.ones(n, dtype=bool)
    screened = _pass(g, screen, everyone, r.screen_rate, penalty)
    interview = truth + g.rng.normal(0, 0.6, n)
    interviewed = _pass(g, interview, screened, r.interview_rate, penalty)
    final = truth + r.talent_weight * np.array([q.talent for q in people]) + g.rng.normal(0, 0.5, n)
    accepts = g.rng.random(2) < 0.8
    # Some postings close without a hire (budget cut, internal move) whoever applied.
    closes = g.chance(0.1)
    # Up to two offers in order of the final assessment; the bar keeps weak finalists out.
    bar = float(np.quantile(final, 0.7))
    order = [int(i) for i in np.argsort(-final, kind="stable") if interviewed[i] and final[i] > bar]
    offered = np.zeros(n, dtype=bool)
    hired = np.zeros(n, dtype=bool)
    for k, i in enumerate([] if closes else order[:2]):
        offered[i] = True
        if accepts[k]:
            hired[i] = True
            break

    gaps = g.rng.uniform(0.0, 1.0, (n, 6))
    out: list[Outcome] = []
    for i, (cid, _) in enumerate(applicants):
        at = p.created_at + _hours(21 * gaps[i, 0])
        out.append(Outcome(p.id, cid, Stage.APPLIED, at))
        for col, (reached, stage, lo, hi) in enumerate(
            (
                (screened[i], Stage.SCREENED, 2, 10),
                (interviewed[i], Stage.INTERVIEWED, 5, 20),
                (offered[i], Stage.OFFERED, 5, 15),
                (hired[i], Stage.HIRED, 2, 10),
            ),
            start=1,
        ):
            if not reached:
                break
            at = at + _hours(lo + (hi - lo) * gaps[i, col])

            out.append(Outcome(p.id, cid, stage, at))
        if not hired[i]:
            out.append(Outcome(p.id, cid, Stage.REJECTED, at + _hours(1 + 13 * gaps[i, 5])))
    return out


def _hours(days: float) -> timedelta:
    return timedelta(hours=float(np.round(days * 24)))


def proxy_rates(data: DemoData, attribute: str, proxy: str) -> dict[str, float]:
    """Share of each category of `attribute` whose CV shows `proxy` (unknown category left out)."""
    counts: Counter[str] = Counter()
    shown: Counter[str] = Counter()
    for cid, attrs in data.protected.items():
        if attribute in attrs:
            counts[attrs[attribute]] += 1
            shown[attrs[attribute]] += proxy in data.proxies.get(cid, frozenset())
    return {cat: shown[cat] / counts[cat] for cat in sorted(counts)}


def _check_bias(data: DemoData, bias: Bias) -> None:
    """Refuse a bias whose proxy does not single out its target: it would bias nobody in particular."""
    shown = {True: [0, 0], False: [0, 0]}  # in the target category? -> [proxy holders, all]
    for cid, attrs in data.protected.items():
        if bias.attribute in attrs:
            tally = shown[attrs[bias.attribute] == bias.value]
            tally[0] += bias.proxy in data.proxies.get(cid, frozenset())
            tally[1] += 1
    if not shown[True][1]:
        known = ", ".join(
            sorted({a[bias.attribute] for a in data.protected.values() if bias.attribute in a})
        )
        raise InvalidInput(
            f"no candidate has {bias.attribute}={bias.value}; categories of {bias.attribute}: "
            f"{known or 'none'}"
        )
    target = shown[True][0] / shown[True][1]
    rest = shown[False][0] / max(1, shown[False][1])
    if target == 0 or target < 1.5 * rest:
        raise InvalidInput(
            f"{bias.proxy} shows in {target:.0%} of {bias.attribute}={bias.value} CVs and "
            f"{rest:.0%} of the others, so it is no proxy of that category; choose another "
            f"proxy ({', '.join(PROXIES)}) or category"
        )


def generate(config: DemoConfig | None = None) -> DemoData:
    """The demo set for `config`; the same config always gives the same records."""
    cfg = config or DemoConfig()
    g = _Gen(np.random.default_rng(cfg.seed))
    width = max(4, len(str(cfg.candidates)))
    people: list[tuple[str, _Person]] = []
    candidates: list[Candidate] = []
    protected: dict[str, dict[str, str]] = {}
    family_of: dict[str, str] = {}
    for i in range(cfg.candidates):
        cid = f"C{i + 1:0{width}d}"
        person = _make_person(g)
        attrs = _protected(g, person.age)
        # The CV proxies follow the protected attributes, as in life; the unbiased hiring
        # process ignores them.
        person.career_break = person.years >= 3 and g.chance(CAREER_BREAK_RATE[attrs["sex"]])
        person.part_time = g.chance(PART_TIME_RATE[attrs["sex"]])
        title = _seniority(person.years) + g.pick(person.family.titles)
        cv, listed = _cv(g, person, title, cfg.short_cvs)
        candidates.append(
            Candidate(
                id=cid,
                cv_text=cv,
                skills=tuple(listed),
                years_experience=person.years,
                location=person.city,
                willing_to_relocate=person.relocate,
                remote_ok=person.remote_ok,
                title=title,
                updated_at=START + timedelta(days=int(g.rng.integers(0, SPAN_DAYS))),
            )
        )
        people.append((cid, person))
        protected[cid] = attrs
        family_of[cid] = person.family.name

    by_family: dict[str, list[int]] = {f.name: [] for f in FAMILIES}
    changers: dict[str, list[int]] = {f.name: [] for f in FAMILIES}
    for idx, (_, person) in enumerate(people):
        by_family[person.family.name].append(idx)
        if person.target is not None:
            changers[person.target.name].append(idx)

    offsets = np.sort(g.rng.uniform(0, SPAN_DAYS, cfg.postings))
    postings: list[Posting] = []
    outcomes: list[Outcome] = []
    pwidth = max(4, len(str(cfg.postings)))
    for j, off in enumerate(offsets):
        created = START + timedelta(hours=float(np.round(off * 24)))
        posting, fam, recruiter = _posting(g, f"P{j + 1:0{pwidth}d}", created)
        postings.append(posting)
        family_of[posting.id] = fam.name
        n_app = min(len(people), int(g.rng.integers(cfg.applicants[0], cfg.applicants[1] + 1)))
        # A realistic applicant mix: mostly the posting's family, then neighbours and changers,
        # then anyone.
        pools = [
            (by_family[fam.name], 0.5),
            ([i for a in fam.adjacent for i in by_family[a]] + changers[fam.name], 0.3),
            (list(range(len(people))), 0.2),
        ]
        chosen: dict[int, None] = {}
        for pool, share in pools:
            want = int(round(n_app * share))
            if pool:
                for i in g.sample(pool, want):
                    chosen.setdefault(i)
        applicants = [people[i] for i in chosen]
        outcomes += _outcomes(g, posting, fam, recruiter, applicants, cfg.bias)
    data = DemoData(
        candidates,
        postings,
        outcomes,
        protected,
        family_of,
        {cid: person.proxies for cid, person in people},
    )
    if cfg.bias is not None:
        _check_bias(data, cfg.bias)
    return data


def write_demo(data: DemoData, out_dir: Path) -> list[Path]:
    """The four JSONL files of the demo set under `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in DEMO_FILES]
    write_jsonl(paths[0], [to_plain(c) for c in data.candidates])
    write_jsonl(paths[1], [to_plain(p) for p in data.postings])
    write_jsonl(paths[2], [to_plain(o) for o in data.outcomes])
    write_jsonl(paths[3], [{"candidate_id": cid, **attrs} for cid, attrs in data.protected.items()])
    return paths


def demo_present(out_dir: Path) -> bool:
    """Whether all four demo files exist (what `ranker demo-data --if-missing` checks)."""
    return all((out_dir / name).is_file() for name in DEMO_FILES)
