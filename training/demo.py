"""A deterministic demo ATS export: candidates with long CVs, postings, and hiring outcomes.

The outcomes come from a hidden hiring process that looks at *true* fit: the skills a candidate
really has (not every skill their CV mentions), years of experience against the posting's minimum,
and whether they can work where the job is, plus noise. Text similarity alone cannot recover it:
CVs mention skills in passing ("partnered with the data team on Tableau dashboards"), career
changers list bootcamp skills they have not used at work, generic sentences are shared across job
families, juniors apply to senior roles, and good matches live in the wrong city.

A synthetic protected attribute per candidate (sex, age band) goes to a separate table for audits;
it never reaches candidates, features or the hidden process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np

from ranker.datafiles import write_jsonl
from ranker.domain import Candidate, Outcome, Posting, Stage, to_plain

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


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and shape of the demo set.

    The default size keeps `make run` to a few minutes on 2 cores: ingestion encodes every CV
    (~500 words, ~4 encoder windows each, so ~8,000 window encodes), training takes seconds.
    """

    candidates: int = 2000
    postings: int = 100
    applicants: tuple[int, int] = (50, 90)
    """Applicants per posting, drawn uniformly from this range (inclusive)."""
    seed: int = 7
    short_cvs: bool = False
    """One or two jobs and few bullets (tests): ~100-200 words instead of ~300-800."""


@dataclass
class DemoData:
    """A generated demo set: domain records plus the protected table kept apart."""

    candidates: list[Candidate]
    postings: list[Posting]
    outcomes: list[Outcome]
    protected: dict[str, dict[str, str]]
    family_of: dict[str, str] = field(default_factory=dict)
    """Hidden job family of every candidate and posting id (for tests and analysis only)."""


@dataclass
class _Person:
    family: Family
    true_skills: list[str]
    years: float
    city: str
    relocate: bool
    remote_ok: bool
    target: Family | None
    """A career changer's target family: their CV talks it up; they do not have its skills."""


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
    target = None
    if g.chance(0.12):
        target = FAMILY_BY_NAME[g.pick(fam.adjacent)]
    return _Person(
        family=fam,
        true_skills=skills,
        years=years,
        city=g.pick(CITIES),
        relocate=g.chance(0.3),
        remote_ok=g.chance(0.55),
        target=target,
    )


def _cv(g: _Gen, person: _Person, title: str, short: bool) -> tuple[str, list[str]]:
    """The CV text, and the structured skills list the ATS parsed from it."""
    fam = person.family
    skills = person.true_skills
    # Self-reported skills are incomplete (some real ones left out) and sometimes inflated.
    listed = [s for s in skills if not g.chance(0.15)] or skills[:1]
    if person.target is not None:
        course = g.sample(person.target.skills[:8], 3)
        listed += [s for s in course[:2] if s not in listed]
    elif g.chance(0.1):
        fake = g.pick(fam.skills)
        if fake not in listed:
            listed.append(fake)

    lines: list[str] = [
        title,
        f"{person.city} | {'open to remote work' if person.remote_ok else 'on-site'}",
    ]
    top = g.sample(skills, min(3, len(skills)))
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
    for j in range(n_jobs):
        span = remaining / (n_jobs - j) if j < n_jobs - 1 else remaining
        months = max(3, int(span * 12))
        start_year, start_month = divmod(end_year * 12 + end_month - months, 12)
        # Earlier jobs carry the seniority of the experience the candidate had back then.
        job_base = base if j == 0 or g.chance(0.6) else g.pick(fam.titles)
        job_title = _seniority(remaining) + job_base
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
            s, t2 = (g.sample(skills, 2) + skills[:1])[:2] if len(skills) > 1 else (skills[0],) * 2
            lines.append(
                "- "
                + t.format(s=s, t=t2, n=int(g.rng.integers(3, 60)), m=int(g.rng.integers(20, 90)))
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

    lines += ["", "SKILLS", ", ".join(listed), "", "EDUCATION"]
    grad_year = 2025 - int(person.years) - int(g.rng.integers(0, 3))
    lines.append(f"{g.pick(fam.degrees)}, {g.pick(UNIVERSITIES)} ({grad_year})")
    if person.target is not None:
        lines.append(
            f"Bootcamp certificate in {person.target.domain} ({2025 - int(g.rng.integers(0, 2))})"
        )
    if not short:
        langs = g.sample(LANGUAGES, 2)
        lines += ["", "LANGUAGES", f"{langs[0]} (native), {langs[1]} (professional working)"]
    return "\n".join(lines), listed


def _posting(g: _Gen, pid: str, created: datetime) -> tuple[Posting, Family]:
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
    )


def _fit(g: _Gen, p: Posting, fam: Family, person: _Person) -> float:
    """The hidden process's view of fit: true skills, experience, location, plus noise."""
    have = set(person.true_skills)
    req = sum(s in have for s in p.required_skills) / max(1, len(p.required_skills))
    nice = sum(s in have for s in p.nice_skills) / max(1, len(p.nice_skills))
    gap = person.years - p.min_years
    exp = -2.0 if gap < -2 else -0.8 if gap < 0 else 0.3 if gap <= 12 else -0.2
    if p.remote:
        loc = 0.0 if person.remote_ok else -0.8
    elif person.city == p.location:
        loc = 0.0
    else:
        loc = -0.5 if person.relocate else -2.0
    same = 0.4 if person.family is fam else 0.0
    return 3.0 * req + 0.8 * nice + exp + loc + same + float(g.rng.normal(0.0, 0.6))


def _days(g: _Gen, lo: float, hi: float) -> timedelta:
    return timedelta(hours=float(np.round(g.rng.uniform(lo, hi) * 24)))


def _outcomes(
    g: _Gen, p: Posting, fam: Family, applicants: list[tuple[str, _Person]]
) -> list[Outcome]:
    assert p.created_at is not None
    if not applicants:
        # Tiny configs can leave a posting with no applicants; np.quantile fails on empty input.
        return []
    fits = np.array([_fit(g, p, fam, person) for _, person in applicants])
    s1 = fits + g.rng.normal(0, 0.4, len(fits))
    screened = s1 > max(1.0, float(np.quantile(s1, 0.6)))
    s2 = fits + g.rng.normal(0, 0.4, len(fits))
    interviewed = screened & (s2 > max(2.0, float(np.quantile(s2, 0.85))))
    s3 = np.where(interviewed, fits + g.rng.normal(0, 0.4, len(fits)), -np.inf)
    order = [int(i) for i in np.argsort(-s3) if interviewed[i] and s3[i] > 2.5][:2]
    offered = np.zeros(len(fits), dtype=bool)
    hired = np.zeros(len(fits), dtype=bool)
    for i in order:
        offered[i] = True
        if g.chance(0.8):
            hired[i] = True
            break

    out: list[Outcome] = []
    for i, (cid, _) in enumerate(applicants):
        at = p.created_at + _days(g, 0, 21)
        out.append(Outcome(p.id, cid, Stage.APPLIED, at))
        for reached, stage, lo, hi in (
            (screened[i], Stage.SCREENED, 2, 10),
            (interviewed[i], Stage.INTERVIEWED, 5, 20),
            (offered[i], Stage.OFFERED, 5, 15),
            (hired[i], Stage.HIRED, 2, 10),
        ):
            if not reached:
                break
            at = at + _days(g, lo, hi)
            out.append(Outcome(p.id, cid, stage, at))
        if not hired[i]:
            out.append(Outcome(p.id, cid, Stage.REJECTED, at + _days(g, 1, 14)))
    return out


def _protected(g: _Gen, years: float) -> dict[str, str]:
    sex = "female" if g.chance(0.49) else "male" if g.chance(0.97) else "non-binary"
    age = 21 + years + float(g.rng.uniform(0, 8))
    band = "18-29" if age < 30 else "30-44" if age < 45 else "45-59" if age < 60 else "60+"
    return {"sex": sex, "age_band": band}


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
        protected[cid] = _protected(g, person.years)
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
        posting, fam = _posting(g, f"P{j + 1:0{pwidth}d}", created)
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
        outcomes += _outcomes(g, posting, fam, applicants)
    return DemoData(candidates, postings, outcomes, protected, family_of)


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
