"""Realistic ~600-word web pages for the keyphrase and end-to-end benchmarks, generated (no downloads).

Each page is about one of a dozen topics: a title, a lead and paragraphs made from sentence patterns
filled with the topic's own terms and with the everyday words any page has. Pages of one topic share
vocabulary, as articles of one site do; pages of different topics share only common English, which
is what makes candidate phrases repeat across real pages. Seeded: the same seed gives the same pages.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass


def _words(text: str) -> tuple[str, ...]:
    """A comma-separated list of words and phrases (a phrase may wrap onto the next line) as a tuple."""
    return tuple(" ".join(word.split()) for word in text.split(",") if word.strip())


TOPICS: dict[str, tuple[str, ...]] = {
    "gardening": _words(
        """
        compost, soil, seedlings, tomatoes, raised beds, mulch, pruning, perennials,
        watering, garden beds, earthworms, nitrogen, greenhouse, seeds, harvest, roots,
        fertilizer, weeds, shade, frost, bulbs, hedges, lawn, herbs
        """
    ),
    "cooking": _words(
        """
        sourdough, flour, oven, recipe, butter, garlic, simmer, broth, spices, knife skills,
        cast iron, dough, caramelised onions, olive oil, stock, baking, pastry, seasoning,
        roast, vegetables, sauce, marinade, kitchen, leftovers
        """
    ),
    "cycling": _words(
        """
        bike, gears, saddle, tyres, chain, commute, helmet, cadence, climbing, brakes, bike
        lanes, panniers, touring, frame, wheels, puncture, routes, training rides,
        derailleur, mountain biking, road bike, lights, pedals, handlebars
        """
    ),
    "personal finance": _words(
        """
        budget, savings, interest rate, index funds, pension, mortgage, credit card,
        emergency fund, inflation, portfolio, dividends, debt, taxes, retirement, expenses,
        income, compound interest, bonds, shares, fees, bank account, insurance, rent,
        financial advice
        """
    ),
    "web performance": _words(
        """
        page load, javascript, images, caching, server response, compression, fonts, render
        blocking, core web vitals, lighthouse, bundle size, lazy loading, latency, browser,
        cdn, http requests, stylesheets, first paint, layout shift, mobile users, network,
        scripts, third party tags, time to interactive
        """
    ),
    "hiking": _words(
        """
        trail, boots, backpack, summit, map, compass, water bottle, blisters, weather
        forecast, ridge, valley, campsite, tent, waterproof jacket, elevation, footpath,
        navigation, layers, snacks, rest stops, wildlife, mountain hut, sunrise, switchbacks
        """
    ),
    "home energy": _words(
        """
        insulation, heat pump, solar panels, boiler, radiators, draughts, windows, energy
        bills, thermostat, loft insulation, double glazing, electricity, gas, battery
        storage, smart meter, hot water, ventilation, condensation, walls, floor insulation,
        heating system, tariff, carbon emissions, grants
        """
    ),
    "coffee": _words(
        """
        espresso, beans, grinder, roast profile, milk, crema, brew ratio, filter coffee,
        acidity, arabica, extraction, water temperature, pour over, barista, latte, flavour
        notes, origin, single origin, burr grinder, tamping, aeropress, cafe, freshness,
        bitterness
        """
    ),
    "photography": _words(
        """
        camera, lens, aperture, shutter speed, exposure, light, composition, tripod,
        portrait, landscape, focus, iso, raw files, editing, sensor, depth of field, golden
        hour, flash, prime lens, zoom lens, white balance, histogram, street photography,
        noise
        """
    ),
    "remote work": _words(
        """
        meetings, video calls, home office, schedule, focus time, team, async communication,
        desk, productivity, burnout, manager, time zones, documentation, collaboration,
        breaks, chat, workspace, deadlines, onboarding, notifications, calendar, standups,
        feedback, boundaries
        """
    ),
    "dog training": _words(
        """
        puppy, treats, recall, lead, leash walking, crate, reward, commands, sit, obedience,
        socialisation, barking, chewing, toys, trainer, positive reinforcement, house
        training, walks, vet, behaviour, patience, clicker, routine, playtime
        """
    ),
    "running": _words(
        """
        marathon, training plan, pace, shoes, long run, intervals, recovery, injury,
        stretching, hydration, race day, tempo run, heart rate, mileage, warm up, hills,
        parkrun, stride, running club, rest days, fatigue, nutrition, personal best, track
        """
    ),
}

COMMON_NOUNS = _words(
    """
    people, time, way, day, week, year, problem, question, idea, result, difference, choice,
    mistake, advice, experience, beginners, guide, money, effort, list, example, method, reason,
    habit, price, quality, tips, details, family, friends, weekend, morning, evening, season,
    winter, summer, spring, autumn, budget, goal, plan, step, process, change, cost, value,
    risk, benefit, option, tool, kit, shop, store, brand, product, review, test, story, lesson,
    rule, myth, fact, study, survey, research, expert, beginner, community, neighbour, city,
    village, home, room, space, routine, schedule, hour, minute, month, decade, future, past,
    moment, chance, habitat, balance, comfort, safety, health, energy, attention, patience,
    confidence, skill, practice, level, stage, pattern, system, approach, strategy, checklist,
    budgeting, weather, climate, temperature, distance, speed, weight, size, shape, colour,
    sound, smell, taste, texture, surface, material, design, problem solving, rule of thumb,
    trial and error, first step, long term
    """
)
ADJECTIVES = _words(
    """
    good, simple, cheap, expensive, common, easy, hard, small, big, better, useful, popular,
    reliable, quick, slow, healthy, practical, important, new, old, regular, careful, gentle,
    strong, light, heavy, warm, cold, fresh, clean, quiet, busy, modern, traditional, local,
    seasonal, daily, weekly, safe, risky, smart, clever, obvious, surprising, honest, detailed,
    short, long, typical, rare, affordable, efficient, sustainable, flexible, solid, fragile,
    bright, dark, early, late
    """
)
VERBS = _words(
    """
    improve, choose, check, avoid, compare, change, keep, plan, start, try, learn, measure, fix,
    reduce, protect, enjoy, build, replace, clean, test, store, share, prepare, adjust, track,
    record, repair, upgrade, organise, balance, schedule, practise, explore, review, limit,
    increase, support, handle, manage, finish
    """
)
PATTERNS = (
    "Most {people} who {verb} {a} {term} find that {term2} matters more than they expected.",
    "If you want to {verb} your {term}, start with {term2} and {adj} {noun}.",
    "A {adj} {term} can make a real {noun} for {people} on a {adj2} {noun2}.",
    "The {adj} thing about {term} is that {term2} is {adj2} to {verb} once you know how.",
    "We asked {people} about {term}, and the most {adj} answer was to {verb} {term2} every {noun}.",
    "Do not {verb} {term} before you {verb2} {term2}; it is a {adj} {noun} many {people} make.",
    "Over a {noun} you will notice how {term} and {term2} affect each other.",
    "Our {adj} {noun} on {term} covers {term2}, {term3} and the {adj2} {noun2} behind them.",
    "Experts recommend that you {verb} {term} first, then {verb2} {term2} when the {noun} allows.",
    "There is no {adj} answer: {term} depends on {term2}, your {noun} and your {noun2}.",
    "{Term} is {adj} for {people}, but {term2} needs a little more {noun}.",
    "Keep notes on {term} and {term2} so you can {verb} what works and what does not.",
    "In {adj} {noun2} conditions, {term} behaves differently, so {verb} {term2} with some {noun}.",
    "One {adj} {noun} we hear often: {people} {verb} {term} and forget about {term2}.",
    "The {noun} of {term} has gone up, which is why a {adj} {noun2} to {verb} {term2} helps.",
    "Think of {term} as a {noun}: {adj} at first, {adj2} later, and worth every {noun2}.",
    "A {noun} from our {noun2}: {verb} {term3} early, {verb2} {term} often, and watch {term2}.",
    "You do not need an {adj} {noun} to {verb} {term}; {adj2} {term2} and some {noun2} will do.",
    "Readers who {verb} {term} every {noun} report {adj} {noun2} and fewer problems with {term2}.",
    "Before buying, {verb} the {noun} of {term}, the {noun2} of {term2} and any {adj} {term3}.",
)
PEOPLE = ("beginners", "most people", "experienced readers", "families", "our readers", "professionals", "many of us")


@dataclass(frozen=True)
class Page:
    topic: str
    title: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join((self.title, *self.paragraphs))

    def html(self) -> str:
        """The page as a small HTML document, as the end-to-end benchmark serves it."""
        body = "".join(f"<p>{html.escape(p)}</p>" for p in self.paragraphs)
        title = html.escape(self.title)
        return (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="description" content="{html.escape(self.paragraphs[0][:150])}"></head>'
            f"<body><main><h1>{title}</h1>{body}</main></body></html>"
        )


def _sentence(rng: random.Random, terms: tuple[str, ...]) -> str:
    picked = rng.sample(terms, 3)
    values = {
        "term": picked[0],
        "term2": picked[1],
        "term3": picked[2],
        "Term": picked[0].capitalize(),
        "adj": rng.choice(ADJECTIVES),
        "adj2": rng.choice(ADJECTIVES),
        "noun": rng.choice(COMMON_NOUNS),
        "noun2": rng.choice(COMMON_NOUNS),
        "verb": rng.choice(VERBS),
        "verb2": rng.choice(VERBS),
        "people": rng.choice(PEOPLE),
        "a": "a",
    }
    return rng.choice(PATTERNS).format(**values)


def page(rng: random.Random, topic: str, words: int = 600) -> Page:
    terms = TOPICS[topic]
    focus = rng.sample(terms, 2)
    title = f"{rng.choice(ADJECTIVES).capitalize()} {focus[0]} and {focus[1]}: a {rng.choice(COMMON_NOUNS)} for {topic}"
    paragraphs: list[str] = []
    count = len(title.split())
    while count < words:
        paragraph = " ".join(_sentence(rng, terms) for _ in range(rng.randint(3, 6)))
        paragraphs.append(paragraph)
        count += len(paragraph.split())
    return Page(topic, title, tuple(paragraphs))


def corpus(count: int, *, seed: int = 6, words: int = 600) -> list[Page]:
    """`count` pages cycling through the topics, each different."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    return [page(rng, topics[i % len(topics)], words) for i in range(count)]
