"""Vocabulary of the demo support messages: products, intents, the core phrasings per intent, order-id
sentences, greetings, sign-offs, urgency cues and the made-up personal data. demo_messages.py assembles
messages from these pieces; generate_demo.py and generate_preferences.py write the drops."""

import re

INSTRUCTION = "Extract intent, product, order_id and urgency as JSON."

PRODUCTS = [
    "Aurora X2 headphones",
    "Nimbus 5 laptop",
    "Pulse smartwatch",
    "Vega mini speaker",
    "Zephyr air purifier",
    "Halo smart bulb",
    "Terra fitness band",
    "Lumen 4K webcam",
    "Echo-Go power bank",
    "Stratus 11 tablet",
    "Nova e-reader",
]

INTENTS = [
    "refund",
    "cancel_order",
    "shipping_status",
    "damaged_item",
    "billing_issue",
    "account_access",
    "product_question",
    "return_request",
]

# "{p}" is the product.  No template may contain an urgency cue word.
CORES = {
    "refund": [
        "I'd like a refund for my {p}.",
        "Please refund the {p} I bought.",
        "Can I get my money back for the {p}?",
        "I want a full refund on the {p}, it's not what I expected.",
        "Requesting a refund for the {p}.",
        "How do I get refunded for my {p}?",
        "The {p} didn't work out for me, please issue a refund.",
        "I was promised a refund for the {p} and haven't seen it yet.",
        "Could you refund me for the {p}? I don't need it anymore.",
        "I need my money back for the {p}.",
    ],
    "cancel_order": [
        "Please cancel my order for the {p}.",
        "I want to cancel the {p} I ordered.",
        "Can you cancel my {p} order before it ships?",
        "I ordered the {p} by mistake, please cancel it.",
        "Cancel the {p} please, I changed my mind.",
        "How do I cancel an order for the {p}?",
        "I need to cancel my {p} purchase.",
        "Don't ship the {p}, I'd like to cancel.",
        "Is it too late to cancel the {p}?",
    ],
    "shipping_status": [
        "Where is my {p}?",
        "My {p} hasn't arrived yet, can you check the status?",
        "Any update on when the {p} will ship?",
        "Tracking for my {p} hasn't updated in a week.",
        "Can you tell me when my {p} will be delivered?",
        "The {p} was supposed to arrive on Monday and it's still not here.",
        "Has my {p} shipped yet?",
        "What's the delivery status of the {p}?",
        "I'm still waiting on the {p}, where is it?",
    ],
    "damaged_item": [
        "My {p} arrived broken.",
        "The {p} arrived with a crack in the casing.",
        "The box was crushed and the {p} inside is damaged.",
        "My {p} was damaged in shipping.",
        "The {p} I received is scratched and dented.",
        "Got the {p} today but it's smashed.",
        "The {p} showed up in pieces.",
        "There's a big dent in the {p} I just got.",
        "My new {p} came damaged, what can you do?",
    ],
    "billing_issue": [
        "I was charged twice for the {p}.",
        "There's an extra charge on my card for the {p}.",
        "The price I paid for the {p} doesn't match the receipt.",
        "I got billed for a {p} I never ordered.",
        "My invoice for the {p} is wrong.",
        "Why was I charged a subscription fee for the {p}?",
        "The discount code didn't apply to my {p} purchase and I was overcharged.",
        "I see two payments for the {p} on my statement.",
        "I was charged tax twice on the {p}.",
    ],
    "account_access": [
        "I can't log in to my account to register my {p}.",
        "I'm locked out of the app for my {p}.",
        "Password reset emails never arrive, so I can't manage my {p}.",
        "My account got locked after I set up the {p}.",
        "I can't sign in to the {p} companion app.",
        "The two-factor code isn't working and I can't reach my {p} settings.",
        "I forgot my password and can't see the warranty for my {p}.",
        "My login stopped working since I paired the {p}.",
        "Can't get into my account since I added the {p}.",
    ],
    "product_question": [
        "Does the {p} work with Android phones?",
        "What's the battery life on the {p}?",
        "Is the {p} waterproof?",
        "Can the {p} be used while charging?",
        "Does the {p} come with a warranty?",
        "Which charger do I need for the {p}?",
        "Is there a newer version of the {p} coming out?",
        "How do I update the firmware on my {p}?",
        "Is the {p} compatible with Bluetooth 5.3?",
    ],
    "return_request": [
        "I'd like to return the {p}.",
        "How do I send back my {p}?",
        "Can I get a return label for the {p}?",
        "I want to return the {p} and get a different color.",
        "The {p} doesn't fit my needs, I want to return it.",
        "Is the {p} still within the return window?",
        "I need to return the {p}, it was a gift I don't need.",
        "Please start a return for my {p}.",
        "Where do I drop off the {p} for a return?",
    ],
}

# Probability that a message of this intent mentions an order id (~75% overall).
ORDER_P = {i: 0.85 for i in INTENTS}
ORDER_P["account_access"] = 0.45
ORDER_P["product_question"] = 0.45

# "{o}" is the order id.
ORDER_SENTENCES = [
    "Order {o}.",
    "Order number: {o}.",
    "My order is {o}.",
    "It was order {o}.",
    "Order id {o}.",
    "This is about order {o}.",
    "order #{o}",
    "ref {o}",
    "Order {o}, placed last week.",
]

GREETINGS = [
    "Hi,", "Hello,", "Hey there,", "Hi team,", "Good morning,",
    "Hello support,", "hey", "Hi there!", "Dear support,",
]
SIGNOFFS = [
    "Thanks.", "Thank you!", "Thanks, Sam", "Cheers", "Regards, Priya",
    "thx", "Thanks in advance \U0001f64f", "\u2014 Marco", "Best, Jo",
]

# (text, position) -- position "pre" goes before the request, "post" after.
HIGH_CUES = [
    ("This is urgent.", "post"),
    ("URGENT:", "pre"),
    ("Please sort this asap.", "post"),
    ("I need this fixed immediately.", "post"),
    ("I need help right now.", "post"),
    ("Urgent please!", "post"),
    ("asap please", "post"),
    ("Please reply immediately,", "pre"),
]
LOW_CUES = [
    ("No rush.", "post"),
    ("no rush on this", "post"),
    ("Reply when you get a chance.", "post"),
    ("Whenever you can.", "post"),
    ("whenever is fine", "post"),
    ("When you get a chance,", "pre"),
    ("No rush, just curious.", "post"),
]
URGENCY_WEIGHTS = [("low", 0.25), ("medium", 0.5), ("high", 0.25)]

FIRST_NAMES = ["jane", "omar", "li", "maria", "tom", "aisha", "lukas", "nina", "raj", "sofia", "kenji", "emma"]
LAST_NAMES = ["doe", "haddad", "chen", "garcia", "baker", "okafor", "weber", "novak", "patel", "rossi", "sato", "smith"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net"]

EMAIL_SENTENCES = ["You can email me at {e}.", "My email is {e}", "Reach me at {e}.", "email: {e}"]
PHONE_SENTENCES = ["Call me on {t}.", "My number is {t}.", "Text {t} if that's easier.", "phone {t}"]
BOTH_SENTENCES = ["Contact: {e} / {t}", "You can reach me at {e} or {t}."]

# Well-known test card numbers and example IBANs (not real accounts).
CARDS = ["4111 1111 1111 1111", "5555 5555 5555 4444", "4012 8888 8888 1881",
         "4242 4242 4242 4242", "5105 1051 0510 5100"]
CARD_SENTENCES = ["I paid with card {c}.", "The charge was on card {c}.", "card number {c} if you need it"]
IBANS = ["DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32", "FR14 2004 1010 0505 0001 3M02 606"]
IBAN_SENTENCES = ["My IBAN is {i} in case you need it.", "Bank details: IBAN {i}"]
MONEY_INTENTS = ["refund", "billing_issue", "cancel_order", "return_request"]

PLAIN_TEXT_LINES = ["--- export page 3 of 7 (agent-7, 2026-01-19) ---"]

TRAILING_PUNCT = ".!?\u2026 \t\n"

# Protected spans (product, order id, PII, logs) are replaced by \x00<n>\x00
# markers while casing/whitespace/punctuation transforms run, so they always
# appear verbatim in the final message.
MARK_RE = re.compile(r"(\x00\d+\x00)")
