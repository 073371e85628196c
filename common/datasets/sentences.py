"""Real English sentences and graded sentence pairs for text-embedding parity, calibration
and benchmarks. Written into this file (no downloads, no torch).

- ``SENTENCES``: stand-alone sentences of varied topic, length and style (questions,
  numbers, punctuation, quotes, accents, one-word texts, long ones).
- ``PAIRS``: (a, b, score) with a similarity score from 0 (unrelated) to 5 (same meaning),
  in the style of the STS benchmark, graded by hand, so the ranking of pair cosines can be
  compared across backends and precisions (Spearman) and against the grades.
"""

from __future__ import annotations

SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "Thanks.",
    "Where is the nearest train station?",
    "How do I reset my password if I no longer have access to my email?",
    "The meeting has been moved to Thursday at 3 p.m.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Mitochondria are often described as the powerhouse of the cell.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The speed of light in a vacuum is about 299,792 kilometres per second.",
    "Black holes bend light so strongly that nothing can escape from inside the event horizon.",
    "The Great Wall of China was built over many centuries by several dynasties.",
    "Napoleon was defeated at the Battle of Waterloo in 1815.",
    "The Roman Empire split into eastern and western halves in the late fourth century.",
    "The printing press made books far cheaper and spread literacy across Europe.",
    "Preheat the oven to 180°C and grease a round cake tin.",
    "Whisk the eggs and sugar until the mixture is pale and fluffy.",
    "Add a pinch of salt to the pasta water before it boils.",
    "This soup needs more garlic and a squeeze of lemon.",
    "Fresh basil loses its flavour quickly once it is cooked.",
    "The striker scored twice in the second half to win the match.",
    "She finished the marathon in just under three hours.",
    "The tennis final went to five sets and lasted almost four hours.",
    "Our team lost the game because of two defensive mistakes.",
    "He has been swimming laps every morning since January.",
    "The new phone has a larger battery and a brighter screen.",
    "Restart the router if the Wi-Fi connection keeps dropping.",
    "Python is a popular programming language for data analysis.",
    "The function returns None when the list is empty.",
    "Please update your operating system to install the latest security patches.",
    "The database query timed out after thirty seconds.",
    "Machine learning models can inherit biases from their training data.",
    "Interest rates were raised by a quarter of a percentage point.",
    "The company reported record profits in the third quarter.",
    "Inflation has eroded the purchasing power of wages this year.",
    "Stock markets fell sharply after the announcement.",
    "I would like to open a savings account.",
    "Drink plenty of water and get some rest if you have a fever.",
    "Regular exercise lowers the risk of heart disease.",
    "The doctor prescribed antibiotics for the infection.",
    "Vaccines train the immune system to recognise a pathogen.",
    "Sleeping less than six hours a night can impair concentration.",
    "Our flight was delayed by two hours because of fog.",
    "The hotel room had a beautiful view of the harbour.",
    "Don't forget to bring your passport and a printed copy of the ticket.",
    "Venice is famous for its canals and gondolas.",
    "We hiked to the summit and watched the sun rise over the valley.",
    "The museum is closed on Mondays.",
    "It rained all weekend, so we stayed inside and played board games.",
    "A heavy snowstorm is expected to hit the region tonight.",
    "The forecast says it will be sunny and warm tomorrow.",
    "Climate change is causing glaciers to retreat around the world.",
    "Bees play a crucial role in pollinating crops.",
    "The elephant is the largest living land animal.",
    "My cat sleeps on the windowsill every afternoon.",
    "The dog barked at the postman again this morning.",
    "Owls can rotate their heads about 270 degrees.",
    "The novel tells the story of a family over three generations.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "The orchestra played Beethoven's Ninth Symphony to a full house.",
    "Her latest album mixes jazz with electronic music.",
    "The film won the award for best cinematography.",
    "He painted the portrait in oils over several months.",
    "Can you recommend a good book for a long train journey?",
    "What time does the pharmacy open on Sundays?",
    "Why is the sky blue?",
    "Is it safe to eat raw eggs?",
    "Who invented the telephone?",
    "How many continents are there?",
    "The parliament passed the new law by a narrow majority.",
    "Voters will go to the polls in November.",
    "The mayor promised to build more affordable housing.",
    "Negotiations between the two countries broke down last week.",
    "The children built a sandcastle on the beach.",
    "I left my keys at the office, so I can't get into the flat.",
    "Could you please turn the music down a little?",
    "Happy birthday! I hope you have a wonderful day.",
    "I'm sorry, but I can't make it to dinner tonight.",
    "The package was delivered to the wrong address.",
    "Your order has shipped and should arrive within 3–5 business days.",
    "The café on the corner serves excellent croissants.",
    "Señora García teaches Spanish at the local school.",
    "The naïve assumption turned out to be wrong.",
    '"Never give up," she said, smiling at the crowd.',
    "Version 2.3.1 fixes a crash when opening large files.",
    "Error 404: the requested page could not be found.",
    "The temperature dropped to -15 °F overnight.",
    "The bridge is 1.7 km long and opened in 1937.",
    "A triangle's interior angles always add up to 180 degrees.",
    "Prime numbers have exactly two distinct positive divisors.",
    "The derivative of the sine function is the cosine function.",
    "Quantum computers use qubits that can be in a superposition of states.",
    "Electric cars are becoming cheaper as battery prices fall.",
    "Solar panels generate electricity even on cloudy days, though less of it.",
    "The train was so crowded that we had to stand all the way to Manchester.",
    "After years of planning, the small bakery finally opened its doors to the public, and by noon there was a queue stretching down the street.",
    "Although the experiment failed to confirm the original hypothesis, the researchers discovered an unexpected interaction between the two proteins that may prove more important.",
    "When the power went out during the storm, the whole neighbourhood gathered in the community hall, sharing candles, blankets and stories until the lights came back on after midnight.",
    "In the early morning, before the city woke up, the streets were quiet except for the sound of delivery vans and the occasional cyclist heading to work.",
    "The committee reviewed more than two hundred applications, interviewed twelve candidates over three days, and finally offered the position to a young engineer from Lisbon.",
    "Good.",
    "No way!",
    "Maybe later.",
    "ok",
    "Artificial intelligence",
    "Mount Everest",
    "chocolate chip cookies",
)

# (a, b, score): 5 = same meaning, 4 = nearly, 3 = roughly, 2 = same topic, 1 = loosely, 0 = unrelated
PAIRS: tuple[tuple[str, str, float], ...] = (
    # paraphrases
    ("A man is playing a guitar.", "A man plays the guitar.", 5.0),
    ("The cat is sitting on the mat.", "A cat sits on the mat.", 5.0),
    ("The store closes at nine in the evening.", "The shop shuts at 9 p.m.", 5.0),
    ("How can I lose weight quickly?", "What is the fastest way to lose weight?", 5.0),
    ("The president will visit Japan next month.", "Next month the president is going to travel to Japan.", 5.0),
    ("I forgot my umbrella and got soaked.", "I got drenched because I left my umbrella at home.", 4.8),
    ("The car would not start this morning.", "This morning my car refused to start.", 5.0),
    ("She is reading a book in the garden.", "A woman reads a book outside in the garden.", 4.6),
    ("The company will cut 500 jobs.", "Five hundred employees will be laid off by the firm.", 4.8),
    (
        "The concert was cancelled because of the storm.",
        "The storm forced the organisers to call off the concert.",
        4.8,
    ),
    ("Children are playing football in the park.", "Kids play soccer in a park.", 4.8),
    ("He apologised for being late.", "He said sorry for arriving late.", 5.0),
    # close, one detail differs
    ("A man is slicing tomatoes.", "A man is slicing onions.", 3.2),
    ("A woman is riding a horse.", "A man is riding a horse.", 3.6),
    ("The train to Paris leaves at 8 a.m.", "The train to Paris leaves at 10 a.m.", 3.8),
    ("The museum opens at ten on weekdays.", "The museum opens at ten on weekends.", 3.6),
    ("Two dogs are running through the snow.", "A dog is running through the snow.", 4.0),
    ("The price of oil rose by five percent.", "The price of oil fell by five percent.", 3.0),
    ("I love this restaurant.", "I hate this restaurant.", 2.4),
    ("The baby is sleeping in the crib.", "The baby is crying in the crib.", 3.0),
    ("A girl is playing the piano.", "A girl is playing the violin.", 3.0),
    ("He bought a red car.", "He bought a blue bicycle.", 2.0),
    # related, same situation or topic
    ("The chef is cooking pasta in a large pot.", "Spaghetti is boiling on the stove.", 3.4),
    ("It is going to rain this afternoon.", "Take an umbrella, showers are expected later today.", 3.8),
    ("The stock market crashed today.", "Investors lost billions as share prices plunged.", 4.0),
    ("My laptop battery drains very fast.", "Why does my notebook computer run out of power so quickly?", 4.2),
    ("The patient has a high fever and a cough.", "The sick man is coughing and running a temperature.", 4.2),
    ("The team won the championship.", "The players celebrated their title victory.", 3.8),
    ("A plane is taking off from the runway.", "An airliner departs from the airport.", 4.0),
    ("The students are taking an exam.", "The pupils are sitting a test in the classroom.", 4.2),
    (
        "Scientists discovered a new species of frog in the rainforest.",
        "A previously unknown amphibian was found in the jungle.",
        4.2,
    ),
    ("She planted tomatoes in her garden.", "Her vegetable patch is full of tomato plants.", 3.6),
    ("The bank approved our mortgage application.", "We got the loan to buy the house.", 3.8),
    ("The movie was boring and far too long.", "I fell asleep halfway through the film.", 3.0),
    # same topic, different statement
    ("Football is the most popular sport in Brazil.", "The World Cup final was watched by a billion people.", 2.0),
    ("Python is easy to learn.", "Java programs run on a virtual machine.", 1.8),
    ("The Eiffel Tower is in Paris.", "The Louvre houses the Mona Lisa.", 1.8),
    ("Coffee contains caffeine.", "Tea is grown on hillsides in Sri Lanka.", 1.6),
    ("The moon orbits the Earth.", "Mars has two small moons.", 2.2),
    ("Dogs are loyal pets.", "Cats spend much of the day sleeping.", 1.8),
    ("The hospital hired more nurses.", "Doctors warned about a shortage of hospital beds.", 2.4),
    ("The recipe calls for two cups of flour.", "Bake the bread for forty minutes.", 2.2),
    ("The election results will be announced tonight.", "The candidate gave a speech in the town square.", 2.2),
    ("The river flooded the village.", "Heavy rain caused landslides in the mountains.", 2.6),
    ("He plays chess every Sunday.", "The grandmaster won the tournament in Oslo.", 2.0),
    ("The phone screen cracked when I dropped it.", "The new tablet supports a stylus.", 1.4),
    # loosely related
    ("A woman is slicing an onion.", "A man is driving a car.", 0.4),
    ("The sun is shining brightly.", "She bought new sunglasses yesterday.", 1.2),
    ("The library is quiet in the morning.", "He wrote his thesis on medieval poetry.", 1.0),
    ("The baker wakes up at four a.m.", "Fresh bread smells wonderful.", 1.6),
    ("The ship sailed across the Atlantic.", "My grandfather was a fisherman.", 1.0),
    ("The violinist practised for hours.", "The concert hall has excellent acoustics.", 1.6),
    ("We painted the kitchen yellow.", "The hardware store sells brushes and rollers.", 1.2),
    ("He ran to catch the bus.", "Public transport in the city is cheap.", 1.2),
    # unrelated
    ("The cat chased the mouse.", "The central bank raised interest rates.", 0.0),
    ("A man is playing a flute.", "Mortgage rates hit a ten-year high.", 0.0),
    ("Photosynthesis happens in the leaves.", "The striker was sent off in the final minute.", 0.0),
    ("I need to buy milk and eggs.", "The volcano erupted last night.", 0.0),
    ("The software update failed to install.", "Penguins live in the Southern Hemisphere.", 0.0),
    ("She knitted a scarf for her brother.", "The satellite entered orbit around Jupiter.", 0.0),
    ("The train was delayed by an hour.", "Roses need plenty of sunlight.", 0.0),
    ("My favourite colour is green.", "The court dismissed the lawsuit.", 0.0),
    ("How do I bake sourdough bread?", "What is the capital of Australia?", 0.2),
    ("A child is eating an ice cream.", "Engineers inspected the bridge for cracks.", 0.0),
)


def pair_sentences() -> list[str]:
    """Every distinct sentence of PAIRS, in order of first appearance."""
    seen: dict[str, None] = {}
    for a, b, _ in PAIRS:
        seen.setdefault(a)
        seen.setdefault(b)
    return list(seen)


def all_sentences() -> list[str]:
    """SENTENCES then the pair sentences, without duplicates."""
    seen = dict.fromkeys(SENTENCES)
    for s in pair_sentences():
        seen.setdefault(s)
    return list(seen)


def sentence_batch(n: int, start: int = 0) -> list[str]:
    """n sentences (cycling), mixing short, long, questions and pair sentences."""
    pool = all_sentences()
    # a fixed interleaving so that small batches already vary in length
    order = sorted(range(len(pool)), key=lambda i: (i * 37) % len(pool))
    return [pool[order[(start + i) % len(pool)]] for i in range(n)]
