"""Fixtures for the encoder tests: the sentence-transformers reference and seeded text sets."""

from __future__ import annotations

import random
from typing import Any

import pytest

WORDS = (
    "python kubernetes backend engineer nurse warehouse logistics accountant audit payroll "
    "react typescript design mentoring migration latency pipeline forecasting negotiation "
    "clinical patient safety compliance budget vendor analytics dashboard recruiting "
    "Montréal Zürich Kraków São Paulo Ünïcödé naïve café résumé 東京 数据 서울 Москва "
    "🚀 ✨ 🤝 C++ C# .NET node.js SQL/NoSQL 24/7 99.9% €50k $120,000 — – … « » “quoted”"
).split()


def seeded_texts(seed: int, n: int, min_words: int, max_words: int) -> list[str]:
    """`n` texts of `min_words..max_words` words drawn from a mixed-script vocabulary."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(n)
    ]


# Within the 256-token window: sentence-transformers truncates beyond it, the encoder chunks.
VARIED_TEXTS = [
    "Python developer",
    "x",
    "Senior Site Reliability Engineer — on-call, SLOs, Prometheus & Grafana; 8+ yrs.",
    "Pflegefachkraft (m/w/d) für die Intensivstation, Schichtdienst, Berlin-Mitte.",
    "Ingeniero de datos: Spark, Airflow y dbt; inglés C1; teletrabajo 100 %.",
    "软件工程师，负责后端服务开发，熟悉 Go 和 Kubernetes。",
    "ソフトウェアエンジニア（バックエンド）募集中、リモート可。",
    "프론트엔드 개발자 React 경력 3년 이상",
    "Бухгалтер с опытом работы в 1С, полная занятость.",
    "محاسب قانوني معتمد مع خبرة عشر سنوات",
    "ครูสอนภาษาอังกฤษ ประสบการณ์ 5 ปี",
    "🚀🚀🚀 growth hacker 📈 who ❤️ data 🧑‍💻",
    "e\u0301te\u0301 cafe\u0301 — combining accents, and tabs\tand\nnewlines",
    "A" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<div class='cv'>Skills: <b>SQL</b>, &amp; Excel</div>",
] + seeded_texts(seed=7, n=12, min_words=5, max_words=60)


@pytest.fixture(scope="session")
def reference_model() -> Any:
    """sentence-transformers' own all-MiniLM-L6-v2, loaded offline from the bundled package."""
    from embeddings.export import load_reference_model

    return load_reference_model()
