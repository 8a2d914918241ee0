"""The event types as the Stover documentation groups them, for the create form."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# The seed's three groups, then whatever `attach`/`emit` registered, then the outbox's own.
GROUPS = {"contact": "CRM", "deal": "CRM", "company": "CRM", "post": "Social Media"}
GROUPS["attribution"] = "Attribution"
ORDER = ("CRM", "Social Media", "Attribution", "Other", "Operational")
DESCRIPTIONS = {
    "contact.created": "New contact added",
    "contact.updated": "Contact information modified",
    "contact.deleted": "Contact removed",
    "deal.created": "New deal created",
    "deal.updated": "Deal information modified",
    "deal.stage_changed": "Deal moved to different stage",
    "deal.closed_won": "Deal marked as won",
    "deal.closed_lost": "Deal marked as lost",
    "company.created": "New company added",
    "company.updated": "Company information modified",
    "post.published": "Post successfully published",
    "post.scheduled": "Post scheduled for later",
    "post.failed": "Post failed to publish",
    "attribution.tracked": "New attribution event recorded",
}


@dataclass
class Family:
    """The types sharing a prefix (deal.*), offered whole or one by one."""

    prefix: str
    types: list[str] = field(default_factory=list)

    @property
    def pattern(self) -> str:
        return f"{self.prefix}.*"


@dataclass
class Group:
    name: str
    families: list[Family] = field(default_factory=list)


def group_name(prefix: str) -> str:
    if prefix == "outbox":
        return "Operational"
    return GROUPS.get(prefix, "Other")


def grouped(known: Sequence[str]) -> list[Group]:
    """Known types in the seed's groups, families in first-seen order of the seed's table."""
    order = {name: i for i, name in enumerate(DESCRIPTIONS)}
    groups = {name: Group(name) for name in ORDER}
    families: dict[str, Family] = {}
    for name in sorted(known, key=lambda t: (order.get(t, len(order)), t)):
        prefix = name.split(".", 1)[0]
        if prefix not in families:
            families[prefix] = Family(prefix)
            groups[group_name(prefix)].families.append(families[prefix])
        families[prefix].types.append(name)
    return [group for group in groups.values() if group.families]
