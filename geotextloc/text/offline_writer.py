"""The offline writer: the CVG-Text chain (road features -> building landmarks -> overall
environment, simple directions) written without an LMM, from the extracted facts only.

What it may say comes from :func:`geotextloc.data.text_pipeline.extract`, never from map data
the street view does not show:

- OCR hits (kept ones): the text as read, its direction, its plate's colour, whether it hangs
  on a building or a pole, whether the photo's frame cuts it;
- the segmentation summary: per direction the share of road, pavement, trees, grass, water,
  open ground, sky, signs; the buildings' coverage, number, facade and roof colour, distance
  and height (from the wall's foot and top and the camera height); the road's kerbs and how far
  it reaches (side streets); signs too small to read (sign pixels without OCR text);
- nothing else: the record's coordinates and heading go into the facts (and the LMM's prompt)
  but the offline writer does not use them (a person on the street does not know them).

How the texts vary (so that they read like many writers, not one template):

- *what is said*: each fact is an optional sentence with a priority; the writer draws a token
  budget per text (CLIP tokens, :data:`BUDGET`) and says the core facts, then optional ones in
  a shuffled order until the budget is met;
- *how it is said*: every fact has many sentence plans and synonyms; a text draws a *voice*
  (first person, plain description, directions to a friend) that picks among the plans, and an
  *idiolect*: the half of all wordings this text may use (each person favours some words);
  for every sentence the writer builds several candidates and keeps one of the cheapest, where
  a candidate pays for each word already used in this text and for words every text shares
  ("the", "a", "of", ...): so a text rarely repeats itself, and two texts rarely say a thing
  the same way;
- *order*: the three parts keep the paper's order; sentences within a part are shuffled.

Everything is drawn from ``random.Random(f"{seed}:{name}:{attempt}")``: the same facts, seed
and attempt give the same text, whatever order records are processed in.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter

from geotextloc.text.chain import ChainResult
from geotextloc.text.describe import clip_token_count

BUDGET = {"panorama": (92, 165), "single": (48, 100)}  # CLIP tokens, drawn uniformly per text
VOICES = ("first", "plain", "guide")
CANDIDATES = 8  # candidate sentences built per fact
IDIOLECT = 0.5  # share of the wordings one text may use (:meth:`_Writer.pick`)
SLACK = 1.0  # keep any candidate within this cost of the cheapest (so the cheapest wording does not always win)

WHERE = {  # neutral phrases, any voice
    "front": ["ahead", "straight ahead", "up ahead", "further along", "dead ahead", "down the road ahead",
              "farther on", "up the road"],
    "back": ["behind", "to the rear", "at the back", "in the rear", "back down the road",
             "behind the camera"],
    "left": ["on the left", "on the left-hand side", "along the left", "off to the left", "leftwards",
             "left of the road", "on the left side", "to the left", "across on the left", "on the left verge"],
    "right": ["on the right", "on the right-hand side", "along the right", "off to the right", "rightwards",
              "right of the road", "on the right side", "to the right", "across on the right", "on the right verge"],
}
WHERE_VOICE = {  # phrases that speak as the voice does
    "first": {"front": ["in front of me", "before me", "facing me"],
              "back": ["behind me", "at my back", "over my shoulder", "back the way I came"],
              "left": ["to my left", "on my left", "left of me"], "right": ["to my right", "on my right", "right of me"]},
    "guide": {"front": ["in front of you", "straight on", "facing you"], "back": ["behind you", "at your back"],
              "left": ["to your left", "on your left"], "right": ["to your right", "on your right"]},
    "plain": {},
}
COMMON = {"a", "an", "the", "of", "i", "is", "are", "on", "to", "my", "me", "there", "and", "in", "at", "it",
          "you", "your", "with"}  # words every text would share: a candidate pays for each
HEAVY = {"the": 1.0}  # ... and more for these (the most shared word of all)
WHERE_SINGLE = {
    "left": ["on the left of the picture", "at the left edge of the frame", "in the left part of the view",
             "on the photo's left side", "to the left in this shot"],
    "front": ["in the middle of the picture", "straight ahead", "in the centre of the frame", "dead ahead",
              "at the centre of the view"],
    "right": ["on the right of the picture", "at the right edge of the frame", "in the right part of the view",
              "on the photo's right side", "to the right in this shot"],
}
SIDE = {"left": ["left", "left-hand"], "right": ["right", "right-hand"]}
COLOUR_WORDS = {
    "white": ["white", "pale"], "black": ["black", "jet-black", "dark"], "grey": ["grey", "silver", "slate"],
    "red": ["red", "scarlet"], "dark red": ["dark red", "maroon", "burgundy"], "green": ["green", "leaf-green"],
    "dark green": ["dark green", "bottle-green", "forest-green"], "blue": ["blue", "bright blue", "cobalt"],
    "navy": ["navy", "dark blue", "deep blue"], "yellow": ["yellow", "golden", "mustard"],
    "purple": ["purple", "violet", "plum"], "brown": ["brown", "chocolate"], "orange": ["orange", "amber"],
    "cream": ["cream", "ivory", "off-white"],
}
NUMBER = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _a(word: str) -> str:
    w = word.lower()
    vowel = w[:1] in "aeiou" and not w.startswith(("one", "uni", "use", "eu"))
    return ("an " if vowel else "a ") + word


NOUN_JOINERS = (" and ", ", plus ", " as well as ", " together with ")
PLACE_JOINERS = (" and ", ", and also ", " as well as ")  # between places: "on the left and behind you"


def _list(items: list[str], rng: random.Random, joiners: tuple[str, ...] = NOUN_JOINERS) -> str:
    if len(items) == 1:
        return items[0]
    joiner = rng.choice(joiners)
    return ", ".join(items[:-1]) + joiner + items[-1]


class _Writer:
    """One text: the facts, the random source, the words used so far."""

    def __init__(self, facts: dict, seed: int, attempt: int):
        self.f = facts
        self.view = facts["view"]
        self.key = f"{seed}:{facts['name']}:{attempt}"
        self.rng = random.Random(self.key)
        self.voice = self.rng.choice(VOICES)
        self.used: Counter = Counter()
        self.hits = [h for h in facts["ocr"] if not h.get("dropped")]
        seg = facts.get("segments") or {}
        self.by_dir = seg.get("by_direction", {})
        self.buildings = seg.get("buildings", {})
        self.road = seg.get("road", {})
        self.share = seg.get("share", {})

    # ---------------------------------------------------------------- choosing words
    def pick(self, options):
        """One of ``options``, from this text's *idiolect*: each text keeps a fixed random
        share :data:`IDIOLECT` of all wordings (as each person favours some words), so two
        texts share a wording only when both happen to favour it."""
        mine = [o for o in options if zlib.crc32(f"{self.key}|{o}".encode()) / 2**32 < IDIOLECT]
        return self.rng.choice(mine or options)

    def where(self, d: str) -> str:
        if self.view == "single":
            return self.pick(WHERE_SINGLE[d])
        return self.pick(WHERE[d] + WHERE_VOICE[self.voice].get(d, []))

    def choose(self, make, n: int = CANDIDATES) -> str:
        """Build ``n`` candidates with ``make()`` and keep one of the cheapest (ties: at
        random): a candidate pays 1 for each word already in the text or twice in itself, and
        0.5 for each :data:`COMMON` word (words all texts share make texts alike)."""
        cands = {make() for _ in range(n)}
        cands = sorted(c for c in cands if c)
        if not cands:
            return ""

        def cost(c):
            ws = _words(c)
            return (sum(1 for w in ws if self.used[w]) + (len(ws) - len(set(ws)))
                    + sum(HEAVY.get(w, 0.5) for w in ws if w in COMMON))

        best = min(cost(c) for c in cands)
        text = self.pick([c for c in cands if cost(c) <= best + SLACK])
        self.used.update(_words(text))
        return text

    def sign(self, h: dict) -> str:
        """A sign as seen: its text (a cue), sometimes its colour and where it hangs."""
        name = h["text"]
        colour = self.pick(COLOUR_WORDS.get(h.get("colour") or "", ["painted"]))
        cut = h.get("extra", {}).get("cut")
        pole = h.get("on") == "pole"
        if cut:
            forms = [f"signage cut off by the frame, beginning “{name}”", f"part of a sign reading “{name}…”",
                     f"half-visible lettering, “{name}”", f"cropped letters: “{name}…”"]
        elif pole:
            forms = [f"{_a(colour)} plate on a pole reading “{name}”", f"pole-mounted signage saying {name}",
                     f"{colour} panel on its post, “{name}”", f"signpost marked {name}",
                     f"“{name}” on {colour} roadside plates"]
        else:
            forms = [f"{_a(colour)} sign reading “{name}”", f"{colour} lettering spelling {name}",
                     f"“{name}” lettered on {colour} fascia", f"{name}'s {colour} nameplate",
                     f"shopfront signage for {name}", f"{name} in bold letters over its window",
                     f"{name}, written across {colour} panelling", f"“{name}” above its entrance",
                     f"{colour} signboard announcing {name}", f"{name}, whose {colour} sign is easy to read"]
        return self.pick(forms)

    # ---------------------------------------------------------------- 1. road features
    def road_part(self) -> list[tuple[int, str]]:
        out = []
        r, byd = self.road, self.by_dir
        width = r.get("width_m")
        if self.view == "single":
            road_share = byd.get("front", {}).get("road", 0.0)
            width = None
            size = "wide" if road_share > 0.3 else "narrow" if road_share < 0.15 else "ordinary"
        else:
            size = ("very wide" if width and width > 20 else "wide" if width and width > 12 else
                    "narrow" if width and width < 7 else "ordinary")
        adj = {"very wide": ["very wide", "broad, multi-lane", "huge"], "wide": ["wide", "broad", "generous"],
               "narrow": ["narrow", "tight", "slim", "cramped", "modest"],
               "ordinary": ["two-lane", "medium-width", "regular", "average-sized"]}[size]
        noun = ["street", "road", "carriageway", "thoroughfare", "roadway", "lane", "route"]
        about = f"about {int(round(width / 2.0)) * 2} metres across" if width else ""

        def opener():
            a, n = self.pick(adj), self.pick(noun)
            if self.view == "single":
                forms = [f"The photo looks along {_a(a)} {n}.", f"This picture faces down {_a(a)} {n}.",
                         f"I'm looking straight along {_a(a)} {n}.", f"{_cap(_a(a))} {n} runs away from the camera.",
                         f"Shot from {_a(a)} {n}, facing its direction of travel.", f"Camera pointed down {_a(a)} {n}.",
                         f"My photo follows {_a(a)} {n} forward.", f"Here {_a(a)} {n} leads off into this view."]
            else:
                forms = {"first": [f"I'm standing on {_a(a)} {n}{', ' + about if about else ''}.",
                                   f"I am in the middle of {_a(a)} {n}.", f"My spot is on {_a(a)} {n}.",
                                   f"Right now I'm out on {_a(a)} {n}.", f"I've stopped partway along {_a(a)} {n}."],
                         "plain": [f"The scene is {_a(a)} {n}{' ' + about if about else ''}.",
                                   f"{_cap(_a(a))} {n} passes through here.", f"This place lies on {_a(a)} {n}.",
                                   f"Location: {_a(a)} {n}.", f"{_cap(_a(a))} {n} is where this was captured."],
                         "guide": [f"You'll be on {_a(a)} {n}{', ' + about if about else ''}.",
                                   f"Look for {_a(a)} {n}.", f"Picture {_a(a)} {n}.", f"Find yourself {_a(a)} {n}.",
                                   f"Head to {_a(a)} {n}."]}[self.voice]
            return self.pick(forms)

        out.append((0, self.choose(opener)))
        width_said = "across" in out[0][1]
        walks = [d for d in ("left", "right") if byd.get(d, {}).get("sidewalk", 0) > 0.01]

        def pavements():
            if len(walks) == 2:
                return self.pick(["Pavements run along both sides.", "Footpaths flank the road on each side.",
                                  "Sidewalks edge both kerbs.", "Both kerbs have a walkway.",
                                  "Pedestrians get paved strips either side.", "Raised footways border each edge.",
                                  "Kerbed sidewalks frame the asphalt.", "Walkways line both edges of the tarmac."])
            if len(walks) == 1:
                s = self.pick(SIDE[walks[0]])
                return self.pick([f"Only the {s} side has a pavement.", f"A footpath follows the {s} kerb.",
                                  f"There's a sidewalk on the {s} only.", f"Pedestrians walk along the {s} edge."])
            return self.pick(["No pavement is visible beside the road.", "The tarmac meets the verge without a footpath.",
                              "Nothing like a sidewalk shows here.", "Walkers would have to share the roadway."])

        out.append((2, self.choose(pavements)))
        if width and self.view == "panorama" and not width_said:
            lk, rk = r.get("left_edge_m"), r.get("right_edge_m")
            out.append((3, self.choose(lambda: self.pick([
                f"Kerb to kerb it measures roughly {int(round(width))} metres.",
                f"The carriageway spans some {int(round(width))} m.",
                f"From here the left kerb is about {int(round(lk))} m away and the right one {int(round(rk))} m.",
                f"Its asphalt is around {int(round(width))} metres wide."]))))
        if self.view == "panorama":
            reach = r.get("reach_m", {})
            for d in ("left", "right"):
                if reach.get(d, 0) > 20 and byd.get(d, {}).get("building", 0) < 0.3:
                    out.append((1, self.choose(lambda d=d: self.pick([
                        f"A side street opens {self.where(d)}.", f"{_cap(self.where(d))}, another road branches off.",
                        f"There is a junction {self.where(d)}.", f"A cross street leads away {self.where(d)}."]))))
            if reach.get("front", 0) > 30 and reach.get("back", 0) > 30 and self.rng.random() < 0.6:
                out.append((3, self.choose(lambda: self.pick([
                    "The road carries on straight both ways.", "It stretches far ahead and far behind.",
                    "The way continues in both directions as far as I can see."]))))
        for h in [h for h in self.hits if h.get("on") == "pole"]:
            out.append((1, self.choose(lambda h=h: self.pick([
                f"{_cap(self.where(h['direction']))} stands {self.sign(h)}.",
                f"By the kerb {self.where(h['direction'])} is {self.sign(h)}.",
                f"I notice {self.sign(h)} {self.where(h['direction'])}."]))))
        for d in (("left", "right") if self.view == "panorama" else ("left", "front", "right")):
            if byd.get(d, {}).get("tree", 0) > 0.02:
                out.append((3, self.choose(lambda d=d: self.pick([
                    f"Street trees grow {self.where(d)}.", f"A few trees line the kerb {self.where(d)}.",
                    f"Leafy crowns overhang the road {self.where(d)}.",
                    f"Some greenery shades the {self.pick(SIDE.get(d, ['near']))} verge."]))))
                break
        for d in ("left", "right"):
            if byd.get(d, {}).get("ground", 0) > 0.12 and byd.get(d, {}).get("building", 0) < 0.1:
                out.append((3, self.choose(lambda d=d: self.pick([
                    f"Bare ground and yards open up {self.where(d)}.", f"Unpaved lots border the road {self.where(d)}.",
                    f"{_cap(self.where(d))} the verge widens into open ground.",
                    f"Open plots without buildings lie {self.where(d)}."]))))
                break
        return out

    # ---------------------------------------------------------------- 2. building landmarks
    def storeys(self, height_m: float) -> int:
        return max(1, int(round((height_m - 1.0) / 3.2)))

    def building_sentence(self, d: str, b: dict) -> str:
        cover = b["columns"]
        n = self.storeys(b["height_m"]) if "height_m" in b else None
        if n is None:
            kind = self.pick(["buildings", "facades", "structures"])
        elif n <= 2:
            kind = self.pick(["low houses", "low-rise buildings", "small one- or two-storey buildings",
                              "squat buildings", "modest cottages", "single-storey buildings", "bungalows",
                              "small houses", "one-storey dwellings", "low homes", "small low-rise structures"])
        elif n <= 5:
            k = NUMBER[n] if n < len(NUMBER) else str(n)
            kind = self.pick([f"{k}-storey blocks", f"mid-rise buildings about {k} floors high",
                              f"{k}-floor apartment houses", f"medium-height facades ({k} levels or so)",
                              f"{k}-level walk-ups", f"flats stacked {k} storeys up"])
        else:
            k = NUMBER[n] if n < len(NUMBER) else str(n)
            kind = self.pick([f"tall {k}-storey blocks", f"high buildings reaching {k} floors",
                              "big multi-storey blocks", f"towering facades near {k} storeys", "high-rises",
                              f"lofty {k}-floor buildings"])
        amount = (self.pick(["an unbroken row of", "continuous", "wall-to-wall", "terraced rows of", "solid frontages of"])
                  if cover > 0.8 else self.pick(["several", "clustered", "some", "grouped"]) if cover > 0.4 else
                  self.pick(["few", "scattered", "one or two", "isolated", "sparse"]))
        runs = b.get("runs") or 0
        if 2 <= runs <= 6 and self.rng.random() < 0.6:  # separate buildings counted in the label map
            k = NUMBER[runs]
            amount = self.pick([f"{k} separate", f"{k} distinct", f"a cluster of {k}", f"{k} free-standing"])
        dist = b.get("distance_m")
        m = int(round(dist)) if dist is not None else 0
        near = ("" if dist is None else
                self.pick(["right at the pavement", "close to the kerb", "hard by the road", "almost touching the footway"])
                if dist < 6 else
                self.pick([f"some {m} m away", "a short walk off", f"roughly {m} metres off", f"{m} m from me",
                           f"at about {m} metres", "near the road"]) if dist < 18 else
                self.pick(["set well back", f"about {int(round(dist / 5.0)) * 5} m distant", "at a distance",
                           "beyond a forecourt", f"perhaps {int(round(dist / 5.0)) * 5} metres away"]) if dist < 60 else
                self.pick(["far off", "in the distance", "on the skyline", "a long way off"]))
        colour = b.get("colour")
        if colour and self.rng.random() < 0.75:
            kind = self.pick([f"{colour} {kind}", f"{kind} with {colour} walls", f"{kind}, painted {colour},"
                              if not near else f"{kind} in {colour} shades"])
        where = self.where(d)
        tail = f", {near}" if near and self.rng.random() < 0.6 else ""  # the distance, now and then
        forms = {"first": [f"{_cap(where)} I see {amount} {kind}{tail}.", f"I have {amount} {kind} {where}{tail}.",
                           f"My view {where} shows {amount} {kind}{tail}.", f"Around me {where}: {amount} {kind}{tail}.",
                           f"I'm passing {amount} {kind} {where}{tail}.", f"I notice {amount} {kind} {where}{tail}.",
                           f"Glancing {where}, I count {amount} {kind}{tail}."],
                 "plain": [f"{_cap(amount)} {kind} stand {where}{tail}.", f"{_cap(where)} rise {amount} {kind}{tail}.",
                           f"{_cap(amount)} {kind} line the street {where}{tail}.",
                           f"{_cap(amount)} {kind} face the road {where}{tail}.",
                           f"{_cap(where)}, {amount} {kind} occupy the frontage{tail}.",
                           f"{_cap(where)} are {amount} {kind}{tail}.", f"{_cap(amount)} {kind} sit {where}{tail}."],
                 "guide": [f"Expect {amount} {kind} {where}{tail}.", f"{_cap(where)} you'll find {amount} {kind}{tail}.",
                           f"You'd pass {amount} {kind} {where}{tail}.",
                           f"{_cap(where)} there should be {amount} {kind}{tail}.",
                           f"Check {where} for {amount} {kind}{tail}.",
                           f"{_cap(amount)} {kind} will be {where}{tail}."]}[self.voice]
        return self.pick(forms)

    def surround_sentence(self, dirs: list[str]) -> str:
        """Low houses in several directions, in one sentence."""
        where = _list([self.where(d) for d in dirs], self.rng, PLACE_JOINERS)
        kind = self.pick(["low houses", "one- and two-storey homes", "small houses", "cottages", "bungalows",
                          "single-family houses", "low dwellings"])
        return self.pick([f"More {kind} stand {where}.", f"{_cap(kind)} also sit {where}.",
                          f"{_cap(where)} it's {kind} again.", f"Similar {kind} continue {where}.",
                          f"The pattern repeats {where}: {kind}."])

    def buildings_part(self) -> list[tuple[int, str]]:
        out = []
        dirs = ("left", "right", "front", "back") if self.view == "panorama" else ("left", "front", "right")
        built = {d: self.buildings[d] for d in dirs if d in self.buildings and self.buildings[d]["columns"] >= 0.15}
        ordered = sorted(built.items(), key=lambda kv: -kv[1]["columns"])
        low = [d for d, b in ordered if "height_m" in b and self.storeys(b["height_m"]) <= 2]
        if len(low) >= 3 and self.rng.random() < 0.6:  # one sentence for the low houses all round
            ordered = [(d, b) for d, b in ordered if d not in low[1:]]
            out.append((2, self.choose(lambda: self.surround_sentence(low[1:]))))
        for k, (d, b) in enumerate(ordered):
            out.append((0 if k == 0 else 2, self.choose(lambda d=d, b=b: self.building_sentence(d, b))))
        roofs = [(d, b["roof"]) for d, b in built.items() if b.get("roof")]
        if roofs:
            d, roof = self.pick(roofs)
            out.append((3, self.choose(lambda: self.pick([
                f"{_cap(roof)} roofs crown the buildings {self.where(d)}.", f"Roofs {self.where(d)} look {roof}.",
                f"{_cap(self.where(d))}, pitched {roof} roofs show above the eaves.",
                f"I can make out {roof} roofing {self.where(d)}.", f"Gables {self.where(d)} are {roof}."]))))
        sides = [d for d in ("left", "right") if d in built]
        if self.view == "panorama" and len(sides) == 2 and "height_m" in built["left"] and "height_m" in built["right"]:
            hl, hr = built["left"]["height_m"], built["right"]["height_m"]
            if max(hl, hr) > 1.5 * min(hl, hr):
                tall, low = ("left", "right") if hl > hr else ("right", "left")
                out.append((3, self.choose(lambda: self.pick([
                    f"The {self.pick(SIDE[tall])} side is clearly taller than the {low}.",
                    f"Buildings on the {tall} tower over those on the {low}.",
                    f"Heights differ: higher on the {tall}, lower on the {low}.",
                    f"Rooflines climb {self.where(tall)} and drop {self.where(low)}.",
                    f"{_cap(tall)}-hand buildings outrank their {low}-hand neighbours in height."]))))
        if not built:
            out.append((0, self.choose(lambda: self.pick([
                "No buildings stand close to the road.", "There are hardly any buildings around.",
                "Buildings are absent from this stretch."]))))
        elif self.view == "panorama":
            for d in ("left", "right"):
                if d not in built and self.by_dir.get(d, {}).get("building", 0) < 0.02:
                    out.append((3, self.choose(lambda d=d: self.pick([
                        f"The {d} side is open, with no buildings.", f"Nothing is built {self.where(d)}.",
                        f"{_cap(self.where(d))} the view stays open.", f"No walls rise {self.where(d)}.",
                        f"Emptiness {self.where(d)}: no houses there.", f"{_cap(d)}wards I see no construction at all."]))))
        groups: dict[str, list[dict]] = {}
        for h in self.hits:
            same = groups.get(h["direction"], [])
            if h.get("on") != "pole" and not any(g["text"] == h["text"] for g in same):  # one sign per name and side
                groups.setdefault(h["direction"], []).append(h)
        for k, (d, hs) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1]))):
            for j in range(0, len(hs), 2):
                pair = hs[j:j + 2]
                out.append((1 if k < 3 and j == 0 else 2, self.choose(lambda d=d, pair=pair: self.signs_sentence(d, pair))))
        quiet = [d for d, s in self.by_dir.items() if s.get("sign", 0) > 0.004 and d not in groups]
        if quiet:
            d = self.pick(quiet)
            out.append((4, self.choose(lambda: self.pick([
                f"{_cap(self.where(d))} hangs a sign too small to read.", f"A distant sign {self.where(d)} is illegible.",
                f"I can't make out the lettering of a sign {self.where(d)}."]))))
        return out

    def signs_sentence(self, d: str, hs: list[dict]) -> str:
        items = _list([self.sign(h) for h in hs], self.rng)
        where = self.where(d)
        verb = "is" if len(hs) == 1 else "are"
        forms = {"first": [f"{_cap(where)} I can read {items}.", f"I spot {items} {where}.",
                           f"Glancing {where}, I notice {items}.", f"My eye catches {items} {where}.",
                           f"Reading signs {where}, I make out {items}."],
                 "plain": [f"{_cap(items)} {verb} {where}.", f"{_cap(where)} there {verb} {items}.",
                           f"{_cap(where)} hangs {items}." if len(hs) == 1 else f"{_cap(where)} hang {items}.",
                           f"{_cap(where)} shows {items}.", f"Visible {where}: {items}."],
                 "guide": [f"Watch for {items} {where}.", f"{_cap(where)}, look out for {items}.",
                           f"You should see {items} {where}.", f"Keep an eye out for {items} {where}.",
                           f"Spot {items} {where}."]}[self.voice]
        return self.pick(forms)

    # ---------------------------------------------------------------- 3. overall environment
    def environment_part(self) -> list[tuple[int, str]]:
        out = []
        n_signs = len([h for h in self.hits if h.get("on") != "pole"])
        built = sum(b["columns"] for b in self.buildings.values()) / max(1, len(self.by_dir))
        tall = any(self.storeys(b["height_m"]) >= 4 for b in self.buildings.values() if "height_m" in b)
        built = max(built, 0.45) if tall else built  # apartment blocks make a city, even on one side
        green = self.share.get("tree", 0) + self.share.get("vegetation", 0)
        water = self.share.get("water", 0)
        if n_signs >= 4:
            mood = ["It feels like a busy shopping street.", "Overall a lively commercial strip, full of shops.",
                    "Plenty of businesses make this a retail area.", "The neighbourhood is clearly commercial.",
                    "Shopfronts everywhere: a downtown retail quarter.", "Commerce dominates these surroundings.",
                    "Stores crowd this district's ground floors."]
        elif n_signs >= 1 and built > 0.4:
            mood = ["The area mixes homes with a handful of businesses.", "Mostly residential, with some shops.",
                    "Flats above ground-floor businesses set the tone of this quarter.",
                    "It's an urban quarter, partly commercial.", "Housing and small trade share this neighbourhood.",
                    "A city district where apartments sit over occasional stores."]
        elif built > 0.4 and tall:
            mood = ["The district looks residential and calm.", "Overall it is a quiet area of homes.",
                    "Housing dominates; no shops appear.", "This seems a peaceful residential corner.",
                    "Apartments fill the neighbourhood, without storefronts.", "Homes, not businesses, shape this place.",
                    "Blocks of flats make up this estate.", "People live here; commerce seems elsewhere.",
                    "An apartment quarter, tidy and still."]
        elif built > 0.2:
            mood = ["It's a quiet suburb of small houses.", "Suburban and calm, nothing commercial in sight.",
                    "Detached homes give it a village feel.", "A sleepy residential suburb.",
                    "Low family houses set a peaceful tone.", "This looks like an outer residential district.",
                    "Homes sit spaced apart in a relaxed suburb.", "Very much a dormitory neighbourhood."]
        elif green > 0.05:
            mood = ["The surroundings are green and open.", "It's a leafy, spacious spot.",
                    "Overall the setting feels park-like and airy.", "Vegetation softens this open area."]
        else:
            mood = ["The area is open and sparsely built.", "Overall the place feels empty and wide.",
                    "Few structures interrupt the open space.", "An exposed, thinly settled stretch of land.",
                    "Settlement thins out here.", "Much of this place is undeveloped.",
                    "Wide gaps separate whatever stands around.", "Edge-of-town emptiness prevails."]
        out.append((0, self.choose(lambda: self.pick(mood))))
        if water > 0.003:
            d = max(self.by_dir, key=lambda k: self.by_dir[k].get("water", 0))
            out.append((1, self.choose(lambda: self.pick([
                f"Water is visible {self.where(d)}.", f"{_cap(self.where(d))} lies open water.",
                f"I can glimpse the sea or a lake {self.where(d)}."]))))
        if green > 0.01:
            d = max(self.by_dir, key=lambda k: self.by_dir[k].get("tree", 0) + self.by_dir[k].get("vegetation", 0))
            out.append((2, self.choose(lambda: self.pick([
                f"Most greenery is {self.where(d)}.", f"Trees and grass gather {self.where(d)}.",
                f"{_cap(self.where(d))} the view turns green.", f"Foliage fills the scene {self.where(d)}."]))))
        sky = self.share.get("sky", 0)
        if sky > 0.42:
            out.append((3, self.choose(lambda: self.pick([
                "A wide open sky sits above.", "There's lots of open sky overhead.", "Nothing high blocks the sky.",
                "Big skies dominate overhead.", "Clouds drift across an unobstructed sky.", "Overhead it's mostly sky.",
                "Plenty of daylight pours in from above.", "Heaven stretches wide over low rooftops."]))))
        elif sky < 0.3 and built > 0.3:
            out.append((3, self.choose(lambda: self.pick([
                "Tall walls frame a narrow strip of sky.", "The buildings hem in the sky.",
                "Only a slice of sky shows between the roofs."]))))
        signs = [h for h in self.hits if h.get("on") != "pole" and not h.get("extra", {}).get("cut")]
        if signs and self.view == "panorama":
            h = self.pick(signs)
            out.append((2, self.choose(lambda: self.pick([
                f"The easiest landmark is {h['text']}, {self.where(h['direction'])}.",
                f"To recognise the place, look for {h['text']} {self.where(h['direction'])}.",
                f"{h['text']} {self.where(h['direction'])} makes the spot easy to find."]))))
        return out


def write_offline(facts: dict, seed: int = 0, attempt: int = 0) -> ChainResult:
    """The three parts for one record's extracted facts (module docstring); deterministic in
    ``(facts, seed, attempt)``."""
    w = _Writer(facts, seed, attempt)
    parts = {"road": w.road_part(), "buildings": w.buildings_part(), "environment": w.environment_part()}
    low, high = BUDGET[w.view]
    budget = w.rng.randint(low, high)
    for s in parts.values():
        w.rng.shuffle(s)
    # core sentences (priority 0) always; then optional ones, most important first, at random
    # within a priority, while the text is under budget
    keep = {k: [p == 0 for p, _ in s] for k, s in parts.items()}
    total = 2 + sum(clip_token_count(t) - 2 for k, s in parts.items() for (p, t), on in zip(s, keep[k]) if on)
    optional = [(p, w.rng.random(), k, i) for k, s in parts.items() for i, (p, _) in enumerate(s) if p > 0]
    for p, _, k, i in sorted(optional):
        size = clip_token_count(parts[k][i][1]) - 2
        if total + size <= budget + 6:
            keep[k][i] = True
            total += size
    texts = {}
    for k, s in parts.items():
        chosen = [t for (p, t), on in zip(s, keep[k]) if on and t]
        core = [t for (p, t), on in zip(s, keep[k]) if on and t and p == 0]
        texts[k] = " ".join(core + [t for t in chosen if t not in core])  # a part opens with its core
    result = ChainResult(texts, writer="offline")
    text = result.text
    names = {h["text"] for h in w.hits}
    result.cues = [n for _, n in sorted((text.find(n), n) for n in names if n in text)]
    return result


class OfflineWriter:
    """``write(facts, image_path, attempt) -> ChainResult`` without network (module docstring)."""

    name = "offline"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def write(self, facts: dict, image_path=None, attempt: int = 0) -> ChainResult:
        return write_offline(facts, self.seed, attempt)
