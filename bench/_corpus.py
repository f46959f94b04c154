"""Deterministic, CV-like texts for the benchmarks: varied vocabulary, realistic lengths."""

from __future__ import annotations

import random

_SKILLS = (
    "Python",
    "Java",
    "Kotlin",
    "Go",
    "Rust",
    "C++",
    "TypeScript",
    "React",
    "Django",
    "Flask",
    "FastAPI",
    "Spring Boot",
    "PostgreSQL",
    "MySQL",
    "Redis",
    "Kafka",
    "RabbitMQ",
    "Docker",
    "Kubernetes",
    "Terraform",
    "AWS",
    "GCP",
    "Azure",
    "Airflow",
    "Spark",
    "dbt",
    "Snowflake",
    "PyTorch",
    "TensorFlow",
    "scikit-learn",
    "LightGBM",
    "pandas",
    "NumPy",
    "GraphQL",
    "gRPC",
    "Linux",
    "Ansible",
    "Prometheus",
    "Grafana",
    "Elasticsearch",
    "MongoDB",
    "Cassandra",
    "Figma",
    "Tableau",
    "Power BI",
    "Excel",
    "SAP",
    "Salesforce",
    "Jira",
    "Scrum",
    "Kanban",
    "accounting",
    "payroll",
    "recruiting",
    "logistics",
    "procurement",
    "nursing",
    "welding",
    "forklift operation",
    "customer service",
    "copywriting",
    "SEO",
    "negotiation",
    "budgeting",
)
_TITLES = (
    "Software Engineer",
    "Senior Backend Developer",
    "Data Scientist",
    "Machine Learning Engineer",
    "DevOps Engineer",
    "Site Reliability Engineer",
    "Product Manager",
    "Frontend Developer",
    "Data Analyst",
    "QA Engineer",
    "Engineering Manager",
    "Financial Analyst",
    "HR Generalist",
    "Warehouse Supervisor",
    "Registered Nurse",
    "Sales Representative",
    "Marketing Specialist",
    "Project Coordinator",
    "Technical Writer",
    "Solutions Architect",
    "Security Analyst",
)
_COMPANIES = (
    "Northwind Logistics",
    "Contoso Health",
    "Fabrikam Retail",
    "Tailspin Aviation",
    "Globex Energy",
    "Initech Software",
    "Umbrella Biotech",
    "Vandelay Imports",
    "Wayne Robotics",
    "Acme Payments",
    "Stark Analytics",
    "Hooli Cloud",
    "Pied Piper Media",
    "Soylent Foods",
)
_CITIES = (
    "Berlin",
    "Lisbon",
    "Toronto",
    "Austin",
    "Warsaw",
    "Madrid",
    "Dublin",
    "Singapore",
    "Melbourne",
    "Nairobi",
    "São Paulo",
    "Zürich",
    "Kraków",
    "Montréal",
    "Bangalore",
)
_VERBS = (
    "designed",
    "built",
    "migrated",
    "automated",
    "maintained",
    "scaled",
    "refactored",
    "led",
    "mentored",
    "launched",
    "optimised",
    "audited",
    "documented",
    "negotiated",
    "coordinated",
    "analysed",
    "monitored",
    "delivered",
    "reduced",
    "improved",
    "introduced",
    "streamlined",
)
_OBJECTS = (
    "a billing platform",
    "the customer onboarding flow",
    "an event-driven ingestion pipeline",
    "the recommendation service",
    "internal reporting dashboards",
    "a fraud detection model",
    "the nightly batch jobs",
    "supplier contracts",
    "the on-call rotation",
    "a mobile checkout",
    "quarterly forecasts",
    "the patient intake process",
    "inventory tracking",
    "a search index",
    "the CI/CD pipeline",
    "legacy monoliths",
    "training material",
    "a data warehouse",
    "vendor relationships",
    "the hiring funnel",
    "shift schedules",
    "pricing experiments",
)
_OUTCOMES = (
    "cutting latency by {n}%",
    "saving {n} hours per week",
    "raising conversion by {n}%",
    "serving {n} thousand daily users",
    "reducing incidents by {n}%",
    "lowering costs by {n}%",
    "with zero downtime",
    "ahead of schedule",
    "across {n} regional teams",
    "improving retention by {n}%",
    "handling {n} million events a day",
)
_FILLER = (
    "Collaborated closely with stakeholders from finance, operations and compliance.",
    "Comfortable presenting results to leadership and translating findings into roadmaps.",
    "Volunteer tutor for underprivileged students; fluent in English, Spanish and German.",
    "Interested in distributed systems, observability, and developer experience.",
    "Holds a valid driving licence and is open to occasional travel within the region.",
    "Completed certifications in cloud architecture, agile coaching and workplace safety.",
)


def cv_text(rng: random.Random, min_words: int = 300, max_words: int = 800) -> str:
    """One CV-like text of min_words..max_words words built from varied templates."""
    target = rng.randint(min_words, max_words)
    title = rng.choice(_TITLES)
    parts = [
        f"{title} based in {rng.choice(_CITIES)} with {rng.randint(1, 25)} years of experience.",
        "Skills: " + ", ".join(rng.sample(_SKILLS, rng.randint(6, 14))) + ".",
    ]
    words = sum(len(p.split()) for p in parts)
    while words < target:
        if rng.random() < 0.15:
            header = (
                f"{rng.choice(_TITLES)} at {rng.choice(_COMPANIES)}, {rng.choice(_CITIES)} "
                f"({rng.randint(2001, 2024)}-{rng.randint(2005, 2025)})."
            )
            parts.append(header)
            words += len(header.split())
            continue
        if rng.random() < 0.08:
            sentence = rng.choice(_FILLER)
        else:
            outcome = rng.choice(_OUTCOMES).format(n=rng.randint(2, 95))
            sentence = (
                f"{rng.choice(_VERBS).capitalize()} {rng.choice(_OBJECTS)} using "
                f"{rng.choice(_SKILLS)} and {rng.choice(_SKILLS)}, {outcome}."
            )
        parts.append(sentence)
        words += len(sentence.split())
    return " ".join(parts)


def short_text(rng: random.Random) -> str:
    """One sentence, the length of a search query or a posting title line."""
    return (
        f"{rng.choice(_TITLES)} with {rng.choice(_SKILLS)} and {rng.choice(_SKILLS)} "
        f"in {rng.choice(_CITIES)}."
    )
