"""A seeded fictional world: entities, encyclopedia-style documents and questions answerable from them.

The world holds countries, cities, people, companies and creative works with invented names, so no model can
answer from memory and everything runs offline. Each entity gets one document titled with its name. Questions
come in three kinds:

- `1-hop`: one fact of one entity ("In which city was Orla Venmark born?").
- `bridge`: a fact of an entity reached through another one ("In which city was the author of Quiet Tarsel
  born?" needs the work's document, then the author's).
- `comparison`: the same fact of two entities ("Who was born first, A or B?", "Were A and B born in the same
  city?").

Every answer is a string that appears in a supporting document (or "yes"/"no" for same-X comparisons), the
first supporting document is found by BM25 from the question text and the second from the bridge entity's name
(`metadata["bridge_entity"]`). Generation is deterministic for a seed and takes well under a second for the
default size.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Any

from agentrl.core.types import Task

MONTHS = "January February March April May June July August September October November December".split()
_ONSETS = "b br c d dr f g gr h k l m n p pr r s st t tr v z th sh".split()
_VOWELS = "a e i o u ae ia io ou ei".split()
_CODAS = ["", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk"]
OCCUPATIONS = (
    "architect",
    "painter",
    "novelist",
    "engineer",
    "botanist",
    "composer",
    "historian",
    "physician",
)
INDUSTRIES = (
    "shipbuilding",
    "software",
    "textile",
    "publishing",
    "mining",
    "brewing",
    "aviation",
    "pharmacy",
)
WORK_KINDS = {
    "novel": ("written by", "author"),
    "film": ("directed by", "director"),
    "album": ("recorded by", "performer"),
    "painting": ("painted by", "painter"),
}
WORK_NOUNS = ("Harbor", "Lantern", "Orchard", "Winter", "Mirror", "Garden", "Voyage", "Tide", "Crown", "Echo")


@dataclass
class Entity:
    """One entity: its kind ("person", "city", ...), unique name and attribute dict."""

    kind: str
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    """The generated world: entities by name, one document per entity and the questions."""

    seed: int
    entities: dict[str, Entity]
    documents: list[dict[str, str]]
    tasks: list[Task]

    def document(self, title: str) -> dict[str, str]:
        """The document whose title is `title`."""
        return self._by_title[title]

    def __post_init__(self) -> None:
        self._by_title = {d["title"]: d for d in self.documents}


class _Names:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
        return ("".join(parts) + self.rng.choice(_CODAS)).capitalize()

    def unique(self, make: Any) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used and name.lower() not in {"yes", "no"}:
                self.used.add(name)
                return name
        raise RuntimeError("could not draw a unique name; the world is too large for the name generator")


def _date(rng: random.Random, start: int, end: int) -> tuple[int, int, int]:
    return rng.randint(start, end), rng.randint(1, 12), rng.randint(1, 28)


def _fmt_date(date: tuple[int, int, int]) -> str:
    year, month, day = date
    return f"{day} {MONTHS[month - 1]} {year}"


def _generate_entities(rng: random.Random, num_entities: int) -> dict[str, list[Entity]]:
    names = _Names(rng)
    n_countries = max(4, num_entities // 100)
    n_cities = max(6, num_entities // 6)
    n_companies = max(6, num_entities // 6)
    n_works = max(6, num_entities // 4)
    n_people = max(8, num_entities - n_countries - n_cities - n_companies - n_works)
    countries = [Entity("country", names.unique(lambda: names.word(2) + "ia")) for _ in range(n_countries)]
    for c in countries:
        c.attrs = {"capital_founded": rng.randint(800, 1500)}
    cities = []
    for _ in range(n_cities):
        city = Entity("city", names.unique(lambda: names.word(rng.randint(2, 3))))
        city.attrs = {
            "country": rng.choice(countries).name,
            "founded": rng.randint(900, 1850),
            "population": rng.randint(20, 4000) * 1000 + rng.randint(0, 999),
            "river": names.word(2),
        }
        cities.append(city)
    people = []
    for _ in range(n_people):
        person = Entity("person", names.unique(lambda: f"{names.word(2)} {names.word(rng.randint(2, 3))}"))
        person.attrs = {
            "born": _date(rng, 1890, 1999),
            "birth_city": rng.choice(cities).name,
            "occupation": rng.choice(OCCUPATIONS),
            "pronoun": rng.choice(("He", "She", "They")),
        }
        people.append(person)
    founders = rng.sample(people, min(n_companies, len(people)))
    companies = []
    for founder in founders:
        company = Entity(
            "company", names.unique(lambda: f"{names.word(2)} {rng.choice(('Works', 'Group', 'Labs'))}")
        )
        company.attrs = {
            "founder": founder.name,
            "founded": rng.randint(1800, 2015),
            "hq": rng.choice(cities).name,
            "industry": rng.choice(INDUSTRIES),
        }
        companies.append(company)
    for person in people:
        person.attrs["employer"] = rng.choice(companies).name
    works = []
    for _ in range(n_works):
        work = Entity("work", names.unique(lambda: f"{names.word(2)} {rng.choice(WORK_NOUNS)}"))
        kind = rng.choice(tuple(WORK_KINDS))
        work.attrs = {
            "kind": kind,
            "creator": rng.choice(people).name,
            "year": rng.randint(1920, 2023),
            "publisher": rng.choice(companies).name,
        }
        works.append(work)
    return {"country": countries, "city": cities, "person": people, "company": companies, "work": works}


def _document(entity: Entity) -> str:
    a = entity.attrs
    if entity.kind == "country":
        return (
            f"{entity.name} is a sovereign country. Its oldest settlements date from around "
            f"{a['capital_founded']}, and it is known for its rivers and highland plateaus."
        )
    if entity.kind == "city":
        return (
            f"{entity.name} is a city in {a['country']}. It was founded in {a['founded']} "
            f"on the banks of the {a['river']} river and has a population of {a['population']:,}."
        )
    if entity.kind == "person":
        pronoun = a["pronoun"]
        verb = "have" if pronoun == "They" else "has"
        possessive = {"He": "his", "She": "her", "They": "their"}[pronoun]
        return (
            f"{entity.name} (born {_fmt_date(a['born'])} in {a['birth_city']}) is a {a['occupation']}. "
            f"{pronoun} {verb} worked for {a['employer']} for most of {possessive} career."
        )
    if entity.kind == "company":
        return (
            f"{entity.name} is a {a['industry']} company headquartered in {a['hq']}. "
            f"It was founded in {a['founded']} by {a['founder']}."
        )
    verb, _ = WORK_KINDS[a["kind"]]
    return (
        f"{entity.name} is a {a['year']} {a['kind']} {verb} {a['creator']}. "
        f"It was released by {a['publisher']}."
    )


def _task(
    index: int, seed: int, question: str, answer: str, hop: str, titles: list[str], **extra: Any
) -> Task:
    return Task(
        id=f"synthetic-{seed}-{index:05d}",
        question=question,
        answers=[answer],
        dataset="synthetic",
        metadata={"hop": hop, "supporting_titles": titles, **extra},
    )


def _one_hop(rng: random.Random, ents: dict[str, list[Entity]]) -> tuple[str, str, list[str], dict[str, Any]]:
    kind = rng.choice(("person", "person", "city", "company", "work"))
    e = rng.choice(ents[kind])
    a = e.attrs
    options = {
        "person": [
            (f"In which city was {e.name} born?", a.get("birth_city")),
            (f"In what year was {e.name} born?", str(a.get("born", (0,))[0])),
            (f"Which company does {e.name} work for?", a.get("employer")),
        ],
        "city": [(f"In which country is the city of {e.name}?", a.get("country"))],
        "company": [
            (f"In what year was {e.name} founded?", str(a.get("founded"))),
            (f"In which city is {e.name} headquartered?", a.get("hq")),
            (f"Who founded {e.name}?", a.get("founder")),
        ],
        "work": [
            (f"Who created the {a.get('kind')} {e.name}?", a.get("creator")),
            (f"In what year was the {a.get('kind')} {e.name} released?", str(a.get("year"))),
        ],
    }[kind]
    question, answer = rng.choice(options)
    return question, str(answer), [e.name], {"template": f"{kind}-attribute"}


def _bridge(
    rng: random.Random, ents: dict[str, list[Entity]], by_name: dict[str, Entity]
) -> tuple[str, str, list[str], dict[str, Any]]:
    choice = rng.randrange(6)
    if choice <= 1:
        w = rng.choice(ents["work"])
        role = WORK_KINDS[w.attrs["kind"]][1]
        p = by_name[w.attrs["creator"]]
        if choice == 0:
            q, ans = f"In which city was the {role} of {w.name} born?", p.attrs["birth_city"]
        else:
            q, ans = f"In what year was the {role} of {w.name} born?", str(p.attrs["born"][0])
        return q, ans, [w.name, p.name], {"template": "work-creator", "bridge_entity": p.name}
    if choice == 2:
        c = rng.choice(ents["company"])
        p = by_name[c.attrs["founder"]]
        q = f"In which city was the founder of {c.name} born?"
        return (
            q,
            p.attrs["birth_city"],
            [c.name, p.name],
            {"template": "company-founder", "bridge_entity": p.name},
        )
    if choice == 3:
        p = rng.choice(ents["person"])
        c = by_name[p.attrs["employer"]]
        q = f"In which city is the company that employs {p.name} headquartered?"
        return q, c.attrs["hq"], [p.name, c.name], {"template": "person-employer", "bridge_entity": c.name}
    if choice == 4:
        p = rng.choice(ents["person"])
        city = by_name[p.attrs["birth_city"]]
        q = f"In which country is the city where {p.name} was born?"
        return (
            q,
            city.attrs["country"],
            [p.name, city.name],
            {"template": "person-city", "bridge_entity": city.name},
        )
    w = rng.choice(ents["work"])
    c = by_name[w.attrs["publisher"]]
    q = f"In which city is the company that released {w.name} headquartered?"
    return q, c.attrs["hq"], [w.name, c.name], {"template": "work-publisher", "bridge_entity": c.name}


def _comparison(
    rng: random.Random, ents: dict[str, list[Entity]]
) -> tuple[str, str, list[str], dict[str, Any]]:
    choice = rng.randrange(4)
    for _ in range(100):
        if choice == 0:
            a, b = rng.sample(ents["person"], 2)
            if a.attrs["born"] == b.attrs["born"]:
                continue
            first = a if a.attrs["born"] < b.attrs["born"] else b
            q, ans, template = f"Who was born first, {a.name} or {b.name}?", first.name, "born-first"
        elif choice == 1:
            a, b = rng.sample(ents["company"], 2)
            if a.attrs["founded"] == b.attrs["founded"]:
                continue
            first = a if a.attrs["founded"] < b.attrs["founded"] else b
            q, ans, template = (
                f"Which company was founded earlier, {a.name} or {b.name}?",
                first.name,
                "founded-first",
            )
        elif choice == 2:
            a, b = rng.sample(ents["city"], 2)
            if a.attrs["population"] == b.attrs["population"]:
                continue
            big = a if a.attrs["population"] > b.attrs["population"] else b
            q, ans, template = (
                f"Which city has the larger population, {a.name} or {b.name}?",
                big.name,
                "population",
            )
        else:
            a, b = rng.sample(ents["person"], 2)
            same = a.attrs["birth_city"] == b.attrs["birth_city"]
            q, ans, template = (
                f"Were {a.name} and {b.name} born in the same city?",
                "yes" if same else "no",
                "same-city",
            )
        return q, ans, [a.name, b.name], {"template": template}
    raise RuntimeError("could not draw a comparison without a tie")


@functools.lru_cache(maxsize=8)
def build_world(
    seed: int = 0,
    num_entities: int = 3000,
    num_tasks: int | None = None,
    hop_mix: tuple[float, float, float] = (0.3, 0.45, 0.25),
) -> World:
    """Generate the world for `seed` (cached: treat the result as read-only).

    Args:
        seed: determines every name, fact and question.
        num_entities: entities and therefore documents (default 3000).
        num_tasks: questions to generate (default: one per entity).
        hop_mix: fractions of 1-hop, bridge and comparison questions.
    """
    if num_entities < 40:
        raise ValueError(f"num_entities must be at least 40, got {num_entities}")
    rng = random.Random(seed)
    ents = _generate_entities(rng, num_entities)
    by_name = {e.name: e for group in ents.values() for e in group}
    documents = [
        {"id": f"syn-{seed}-{i}", "title": e.name, "text": _document(e)}
        for i, e in enumerate(by_name.values())
    ]
    tasks: list[Task] = []
    seen: set[str] = set()
    total = num_tasks if num_tasks is not None else num_entities
    hops = ("1-hop", "bridge", "comparison")
    while len(tasks) < total:
        hop = rng.choices(hops, weights=hop_mix)[0]
        if hop == "1-hop":
            q, ans, titles, extra = _one_hop(rng, ents)
        elif hop == "bridge":
            q, ans, titles, extra = _bridge(rng, ents, by_name)
        else:
            q, ans, titles, extra = _comparison(rng, ents)
        if q in seen:
            continue
        seen.add(q)
        tasks.append(_task(len(tasks), seed, q, ans, hop, titles, **extra))
    return World(seed=seed, entities=by_name, documents=documents, tasks=tasks)
