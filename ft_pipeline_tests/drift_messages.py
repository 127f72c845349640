"""Ten prompts the demo model was never trained on (another language, unknown products, other tasks): what the
traffic_drift thresholds are calibrated to flag (docs/flywheel.md)."""

DRIFTING = [
    "Hallo, meine Bestellung ist seit drei Wochen nicht angekommen und niemand antwortet auf meine E-Mails.",
    "Bonjour, je voudrais annuler mon abonnement et obtenir un remboursement complet, s'il vous plaît.",
    "Write a short poem about autumn leaves falling on a quiet lake.",
    "Translate into Spanish: the meeting is moved to Thursday afternoon.",
    "Write a SQL query that returns the ten customers with the highest total spend last year.",
    "My Quasar X9 hoverboard keeps beeping after the firmware flash, is the gyroscope module replaceable?",
    "Summarize the plot of Moby Dick in three sentences.",
    "Can the Helix-7 industrial lathe run on 110V or does it need a three-phase supply?",
    "Explain the difference between a Roth IRA and a traditional IRA for someone in their twenties.",
    "¿Cuál es el horario de atención al cliente durante los días festivos?",
]
