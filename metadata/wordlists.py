"""Word lists owned by the project: gendered terms, occupations (with the stereotype each carries) and the
toxicity allow-list. Used by metadata/metrics.py (input and output metrics) and by eval's bias probes, so a
story and a generation are counted with exactly the same lists.

All entries are lowercase; matching is on lowercased whole word tokens (see metrics.WORD_RE), so "grass" never
matches "ass". Multi-word entries: occupations are matched by their last word, toxic phrases word by word.
"""

# Pronouns: the only terms used to resolve which gender an occupation mention refers to (metrics.occupation_refs).
FEMALE_PRONOUNS = ("she", "her", "hers", "herself")
MALE_PRONOUNS = ("he", "him", "his", "himself")

# Gendered nouns (singular and plural). Counted together with the pronouns in female_terms / male_terms.
# Names and occupation nouns are not counted; possessives ("mom's") are not counted (as in storyworld's
# ground truth). storyworld's FEMALE_TERMS / MALE_TERMS are subsets of these lists (tests/test_metrics.py).
FEMALE_NOUNS = (
    "girl", "girls", "woman", "women", "lady", "ladies", "mother", "mothers", "mom", "moms", "mommy", "mum",
    "mama", "sister", "sisters", "daughter", "daughters", "aunt", "aunts", "aunty", "auntie", "grandma",
    "grandmother", "granny", "wife", "queen", "queens", "princess", "princesses", "niece", "madam",
)
MALE_NOUNS = (
    "boy", "boys", "man", "men", "gentleman", "gentlemen", "father", "fathers", "dad", "dads", "daddy", "papa",
    "brother", "brothers", "son", "sons", "uncle", "uncles", "grandpa", "grandfather", "husband", "king",
    "kings", "prince", "princes", "nephew", "sir",
)

FEMALE_TERMS = frozenset(FEMALE_PRONOUNS + FEMALE_NOUNS)
MALE_TERMS = frozenset(MALE_PRONOUNS + MALE_NOUNS)

# Occupation -> the gender its stereotype attaches to ('female', 'male', None: no stereotype). The input side
# of bias curves counts which pronoun refers to each mention and whether that agrees with this stereotype.
# A mention is the occupation's last word ("officer" for "police officer"); storyworld's list is a subset.
OCCUPATIONS = {
    "nurse": "female", "teacher": "female", "librarian": "female", "dancer": "female", "baker": "female",
    "secretary": "female", "nanny": "female", "hairdresser": "female", "florist": "female",
    "doctor": "male", "firefighter": "male", "mechanic": "male", "pilot": "male", "farmer": "male",
    "builder": "male", "police officer": "male", "scientist": "male", "engineer": "male", "plumber": "male",
    "captain": "male", "soldier": "male",
    "vet": None, "painter": None, "singer": None, "dentist": None,
}
OCCUPATION_HEADS = {occ.split()[-1]: occ for occ in OCCUPATIONS}

# LDNOOBW entries that are innocent in children's stories, so they are not counted as toxic:
#   cock/cocks (the rooster), ass (the donkey), bitch/bitches (a female dog), suck (suck a lollipop),
#   snatch (grab), poof (magic disappearance), spunk (pluck, courage),
#   twinkie (the cake), jelly donut, kinky (kinky hair), escort (accompany), scat (go away! / animal droppings),
#   tied up (a boat), big black / tight white / taste my / tongue in a / girl on (ordinary phrases:
#   "a big black dog", "taste my cake", "the girl on the swing"), xx (kisses), nipple (a baby bottle's).
# Not allowed: "butt" ("fell on his butt") and "sucks" ("this sucks") are rude, and storyworld injects them as
# mild offensive words. Words that merely contain an entry (grass, peacock, grapes) never match: matching is on
# whole words.
TOXIC_ALLOW = frozenset({
    "cock", "cocks", "ass", "bitch", "bitches", "suck", "snatch", "poof", "spunk", "twinkie",
    "jelly donut", "kinky", "escort", "scat", "tied up", "big black", "tight white", "taste my", "tongue in a",
    "girl on", "xx", "nipple",
})

STORY_OPENER = "once upon a time"
