"""cdss: clinical decision support from FHIR R4 data.

Maps a patient's FHIR R4 record through a versioned forward-chaining ruleset
(run on durable-rules) to differential flags, referrals, a tailored
prevention plan and data requests, each with the reason it was produced.

>>> import cdss
>>> assessment = cdss.evaluate(bundle, as_of="2026-01-31")  # doctest: +SKIP
"""

from cdss.assessment import Assessment
from cdss.errors import CDSSError
from cdss.evaluation import evaluate, extract_facts
from cdss.facts import Facts
from cdss.rulesets import Ruleset, load_ruleset

__version__ = "1.0.0"

__all__ = [
    "Assessment",
    "CDSSError",
    "Facts",
    "Ruleset",
    "__version__",
    "evaluate",
    "extract_facts",
    "load_ruleset",
]
