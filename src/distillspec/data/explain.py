"""The 'explain' prompt source: general-knowledge questions that ask for a paragraph.

Why it exists: the pair's draft is a code model, and on general questions
(`prompts/questions.txt`) it agrees with its chat-capable target far less (alpha ~0.43)
than on code (~0.85). The chat data available offline (chitchat) has ~10-token replies on
which the stock draft already agrees ~0.79 of the time, so it teaches the draft nothing
about the long explanatory replies where it falls behind. These prompts ask for exactly
that kind of reply. They are made here from a topic list and question templates, so their
licence is this project's; the subjects of `prompts/questions.txt` are left out (tested),
so that file stays a held-out suite.
"""

from __future__ import annotations

#: Subjects of a short explanatory answer, across everyday science, the body, technology,
#: money, history, geography, culture and daily life.
TOPICS = (
    # physics and chemistry
    "gravity", "friction", "magnetism", "static electricity", "electric current", "sound waves",
    "the Doppler effect", "nuclear fission", "nuclear fusion", "radioactive decay", "the speed of light",
    "rainbows", "lenses and focusing", "mirrors", "buoyancy", "air pressure", "boiling and evaporation",
    "why ice floats", "heat conduction", "insulation in houses", "lasers", "X-rays", "superconductors",
    "batteries", "rust", "acids and bases", "catalysts", "soap and detergents", "baking soda reactions",
    "fireworks colours", "plastics", "glass making", "semiconductors", "solar panels", "wind turbines",
    "hydroelectric dams", "electric motors", "transformers on power lines", "the periodic table",
    "isotopes", "entropy", "momentum", "centripetal force", "pendulums", "tides",
    # earth and space
    "earthquakes", "volcanoes", "plate tectonics", "the water cycle", "clouds", "thunder and lightning",
    "hurricanes", "tornadoes", "glaciers", "ocean currents", "coral reefs", "deserts", "rivers and deltas",
    "fossils", "the ozone layer", "the greenhouse effect", "acid rain", "soil formation", "caves",
    "the Moon's phases", "solar eclipses", "black holes", "comets", "meteor showers", "the Milky Way",
    "exoplanets", "the Big Bang", "the International Space Station", "Mars exploration", "satellites in orbit",
    "GPS navigation", "the northern lights", "time zones", "leap years",
    # living things and the body
    "photosynthesis", "cell division", "DNA", "genes and heredity", "evolution by natural selection",
    "bird migration", "hibernation", "bees and pollination", "ant colonies", "food chains", "camouflage",
    "the heart", "blood types", "the lungs", "digestion", "the kidneys", "the liver", "the brain",
    "sleep", "dreams", "memory", "muscles", "bones", "the skin", "the eye", "hearing", "taste and smell",
    "allergies", "fever", "antibiotics", "antibiotic resistance", "pain relief medicines",
    "blood pressure", "cholesterol", "diabetes", "vitamins", "dietary fibre", "hydration", "caffeine",
    "exercise and fitness", "stretching", "stress", "the placebo effect", "microbes in the gut", "yeast",
    "mushrooms", "trees and wood", "seeds and germination", "composting",
    # technology and computing
    "the internet", "Wi-Fi", "email", "web browsers", "search engines", "passwords", "two-factor authentication",
    "encryption", "malware", "cloud storage", "data compression", "touchscreens", "smartphones",
    "digital cameras", "microwave ovens", "3D printing", "barcodes", "QR codes", "electric cars",
    "hybrid cars", "jet engines", "how airplanes fly", "helicopters", "submarines", "trains", "bicycles",
    "traffic lights", "bridges", "tall buildings", "elevators", "air conditioning",
    "recycling", "water treatment", "sewage systems", "printing presses", "the telephone", "radio",
    "television", "streaming video", "video games", "robots", "artificial intelligence", "machine translation",
    "spreadsheets", "open-source software",
    # money and society
    "inflation", "central banks", "taxes", "budgets", "credit scores", "mortgages",
    "insurance", "the stock market", "bonds", "supply and demand", "unemployment", "international trade",
    "exchange rates", "cryptocurrencies", "small businesses", "advertising", "elections", "democracy",
    "the rule of law", "human rights", "the United Nations", "public libraries", "museums", "universities",
    "apprenticeships", "volunteering", "urban planning", "public transport", "census taking",
    # history and culture
    "the Roman Empire", "ancient Egypt", "the pyramids", "the Silk Road", "the printing revolution",
    "the Renaissance", "the Industrial Revolution", "the French Revolution", "the Olympic Games",
    "the invention of writing", "the history of money", "castles", "the Vikings", "the age of exploration",
    "the moon landing", "the Cold War", "the fall of the Berlin Wall", "the history of medicine",
    "classical music", "jazz", "opera", "painting with oils", "photography", "cinema", "poetry", "novels",
    "theatre", "architecture styles", "mythology", "folk tales", "calendars", "maps", "languages and dialects",
    "learning a second language", "sign languages", "the alphabet",
    # daily life
    "bread making", "fermentation", "coffee brewing", "tea", "cheese making", "chocolate", "spices",
    "food preservation", "cooking with a pressure cooker", "knife skills", "meal planning", "gardening",
    "houseplants", "keeping chickens", "dog training", "cat behaviour", "first aid", "fire safety",
    "saving energy at home", "time management", "taking notes", "public speaking", "job interviews",
    "writing a CV", "negotiation", "teamwork", "chess", "football", "marathon running", "swimming",
    "yoga", "mountain climbing", "camping", "sailing", "bird watching", "knitting", "woodworking",
)

#: Question forms; each asks for a reply of a paragraph or more.
TEMPLATES = (
    "Explain {topic} in a short paragraph.",
    "How does {topic} work? Keep it simple.",
    "What should a curious beginner know about {topic}?",
    "Describe {topic} to a twelve-year-old.",
    "Why does {topic} matter in everyday life?",
    "Give a brief overview of {topic}, with one example.",
    "What are common misconceptions about {topic}?",
    "Write a few sentences on the history of {topic}.",
)


def explain_prompts() -> list[str]:
    """Every topic in every template, in a fixed order (the split is by hash, not order)."""
    return [template.format(topic=topic) for topic in TOPICS for template in TEMPLATES]
